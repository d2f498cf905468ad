-- Owner: query-api. An instant as the HTTP APIs write it (RFC 3339 in UTC with `Z`, the
-- fraction of a second in 0, 3 or 6 digits, whichever shows it exactly), so JSON that
-- PostgreSQL builds for a read (`json_build_object`) has the same bytes as JSON the services
-- build with chrono: a client sees one format, and an answer's `ETag` does not depend on who
-- wrote it. `to_json(timestamptz)` would write the session's offset (`+00:00`) and always six
-- digits. Test: `api_time_writes_an_instant_as_chrono_does`.
CREATE OR REPLACE FUNCTION api_time(at timestamptz) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
  SELECT to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS')
      || CASE WHEN micros = 0 THEN ''
              WHEN micros % 1000 = 0 THEN '.' || lpad((micros / 1000)::text, 3, '0')
              ELSE '.' || lpad(micros::text, 6, '0') END
      || 'Z'
    FROM (SELECT at AT TIME ZONE 'UTC' AS utc) instant,
         LATERAL (SELECT extract(microseconds FROM utc)::bigint % 1000000 AS micros) fraction
$$;
