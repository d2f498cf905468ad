-- Owner: projector (`chat` projection). Unread counts leave deleted messages out: a thread
-- keeps the numbers of its deleted messages (few), and a reader's unread count is the
-- messages after their read position less those deleted (query-api's `UNREAD`).
ALTER TABLE chat_threads ADD COLUMN deleted_numbers bigint[] NOT NULL DEFAULT '{}';

UPDATE chat_threads t
   SET deleted_numbers = d.numbers
  FROM (SELECT thread_id, array_agg(number ORDER BY number) AS numbers
          FROM chat_messages WHERE deleted_at IS NOT NULL GROUP BY thread_id) d
 WHERE d.thread_id = t.id;
