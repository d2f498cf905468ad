//! Audio and transcripts: an upload is streamed into the blob store, sent to AssemblyAI
//! (faked by a local server asserting the exact requests), and completed by AssemblyAI's
//! webhook, which the test sends as the service would; repeated and out-of-order webhooks
//! change nothing; an outage is retried, then fails visibly; limits and types are enforced.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use events::access::TokenKeys;
use events::clock::{Clock, ManualClock};
use projector::due::DueProcessor;
use serde_json::{json, Value};
use wiremock::matchers::{body_bytes, body_json, header, method, path};
use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

use crate::support::{create_tenant, eventually, expect_problem, Service, TestEnv, SECRET};

const KEY: &str = "aai-test-key";
const HOOK_SECRET: &str = "hook-secret-of-the-test";
/// The secret before a rotation: still accepted from transcripts requested with it.
const OLD_HOOK_SECRET: &str = "hook-secret-before-rotation";
const BACKEND: &str = "https://hooks.example.com";

struct Studio {
    env: TestEnv,
    api: Service,
    query: Service,
    _projector: tokio::task::JoinHandle<()>,
    tenant: String,
    admin: String,
    transcriptions: DueProcessor,
    webhooks: DueProcessor,
}

impl Studio {
    /// The services, with the process managers driven by the test on `clock`.
    async fn start(assemblyai: &MockServer, clock: Arc<ManualClock>) -> Self {
        let env = TestEnv::new().await;
        let mut config = env.command_config();
        config.ctx.audio.assemblyai_api_url = assemblyai.uri();
        config.ctx.audio.assemblyai_api_key = Some(KEY.into());
        config.ctx.audio.assemblyai_webhook_secret =
            vec![HOOK_SECRET.into(), OLD_HOOK_SECRET.into()];
        config.backend_url = Some(BACKEND.into());
        let api = env
            .spawn_command_api_with_clock(config, clock.clone())
            .await;
        let projector = env.spawn_projector(env.projector_config());
        let query = env.spawn_query_api(env.query_config()).await;
        let (tenant, _) = create_tenant(&env, &api, &format!("aud{}", &env.prefix[1..9])).await;
        let admin = env.admin_of(&tenant);
        let transcriptions = DueProcessor::transcriptions(
            env.pool.clone(),
            &api.url(""),
            TokenKeys::new(SECRET),
            clock.clone(),
        );
        let webhooks = DueProcessor::webhooks(
            env.pool.clone(),
            &api.url(""),
            TokenKeys::new(SECRET),
            clock,
        );
        Self {
            env,
            api,
            query,
            _projector: projector,
            tenant,
            admin,
            transcriptions,
            webhooks,
        }
    }

    async fn upload(&self, token: &str, bytes: Vec<u8>, content_type: &str) -> reqwest::Response {
        self.upload_as(token, bytes, content_type).await
    }

    async fn upload_as(
        &self,
        token: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("note")
            .mime_str(content_type)
            .expect("mime");
        self.env
            .http
            .post(self.api.url("/v1/audio"))
            .bearer_auth(token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("sent")
    }

    /// A thread opened by chatbot user `user` of the tenant: its id.
    async fn customer_thread(&self, user: &str) -> String {
        let customer = self.env.phone_user(&self.tenant, user);
        self.env
            .http
            .post(self.api.url("/v1/chat/threads"))
            .bearer_auth(&customer)
            .json(&json!({}))
            .send()
            .await
            .expect("sent")
            .json::<Value>()
            .await
            .expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    async fn audio_when(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let url = self.query.url(&format!("/v1/audio/{id}"));
        eventually(Duration::from_secs(20), what, || async {
            let a = self.env.get_json(&url, &self.admin).await;
            check(&a).then_some(a)
        })
        .await
    }

    /// Steps `processor` until it has sent one row (the read model shows it due once its
    /// last change is projected).
    async fn step_once(&self, processor: &DueProcessor) {
        eventually(Duration::from_secs(20), "a due row", || async {
            let r = processor.step().await.expect("step");
            (r.processed == 1).then_some(())
        })
        .await;
    }

    /// AssemblyAI's webhook, as the service sends it.
    async fn webhook(
        &self,
        audio: &str,
        transcript: &str,
        status: &str,
        secret: &str,
    ) -> reqwest::Response {
        self.env
            .http
            .post(
                self.api
                    .url(&format!("/api/webhooks/assemblyai?audio_id={audio}")),
            )
            .header("x-webhook-secret", secret)
            .json(&json!({"transcript_id": transcript, "status": status}))
            .send()
            .await
            .expect("sent")
    }
}

/// AssemblyAI's transcript endpoint, faked as the service behaves: it answers the request
/// and, a moment later, calls the webhook the request named, with the header and secret the
/// request named. The webhook URL's public origin (`BACKEND_URL`) is this test's command-api.
struct CallsBack {
    api: String,
}

impl Respond for CallsBack {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: Value = request.body_json().unwrap_or_default();
        let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
        let url = text("webhook_url").replacen(BACKEND, &self.api, 1);
        let (name, secret) = (
            text("webhook_auth_header_name"),
            text("webhook_auth_header_value"),
        );
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = reqwest::Client::new()
                    .post(url)
                    .header(name, secret)
                    .json(&json!({"transcript_id": "tr_1", "status": "completed"}))
                    .send()
                    .await;
            });
        });
        ResponseTemplate::new(200).set_body_json(transcript_json("queued"))
    }
}

/// [`transcript_json`] as the service describes a transcript requested for audio file `id`.
fn transcript_json_for(id: &str, status: &str) -> Value {
    let mut t = transcript_json(status);
    t["webhook_url"] = json!(format!("{BACKEND}/api/webhooks/assemblyai?audio_id={id}"));
    t
}

fn transcript_json(status: &str) -> Value {
    json!({
        "id": "tr_1", "status": status, "language_code": "en", "confidence": 0.93,
        "text": "Hello, the shop opens at nine.",
        "words": [
            {"text": "Hello,", "start": 250, "end": 650, "confidence": 0.97, "speaker": null},
            {"text": "the", "start": 700, "end": 820, "confidence": 0.99, "speaker": null}
        ],
        "audio_url": "https://cdn.assemblyai.com/upload/abc"
    })
}

/// `len` bytes of a file of `content_type`: its container's signature, then filler.
fn audio_file(content_type: &str, len: usize, filler: u8) -> Vec<u8> {
    let signature: &[u8] = match content_type {
        "audio/mpeg" => b"ID3\x04\x00\x00\x00\x00\x00\x00",
        "audio/wav" => b"RIFF\x24\x08\x00\x00WAVEfmt ",
        "audio/ogg" => b"OggS\x00\x02\x00\x00",
        "audio/webm" => &[0x1A, 0x45, 0xDF, 0xA3],
        "audio/mp4" => b"\x00\x00\x00\x20ftypM4A ",
        other => panic!("no sample for {other}"),
    };
    let mut bytes = signature.to_vec();
    bytes.resize(len.max(signature.len()), filler);
    bytes
}

#[tokio::test]
async fn an_upload_is_transcribed_once_and_its_transcript_posted_in_a_thread() {
    let assemblyai = MockServer::start().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock).await;
    let mut audio: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    audio[..10].copy_from_slice(&audio_file("audio/mpeg", 10, 0));
    let r = studio
        .upload(&studio.admin, audio.clone(), "audio/mpeg")
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Under a name of the upload's own, inside the file's folder.
    let folder = studio
        .env
        .blob_dir
        .join(format!("tenants/{}/audio/{id}", studio.tenant));
    let files: Vec<_> = std::fs::read_dir(&folder)
        .expect("stored in the blob store")
        .map(|f| f.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("mp3"));
    let stored = std::fs::read(&files[0]).expect("readable");
    assert_eq!(stored, audio);

    Mock::given(method("POST"))
        .and(path("/v2/upload"))
        .and(header("authorization", KEY))
        .and(body_bytes(audio))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"upload_url": "https://cdn.assemblyai.com/upload/abc"})),
        )
        .expect(1)
        .mount(&assemblyai)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/transcript"))
        .and(header("authorization", KEY))
        .and(body_json(json!({
            "audio_url": "https://cdn.assemblyai.com/upload/abc",
            "webhook_url": format!("{BACKEND}/api/webhooks/assemblyai?audio_id={id}"),
            "webhook_auth_header_name": "x-webhook-secret",
            "webhook_auth_header_value": HOOK_SECRET,
        })))
        .respond_with(CallsBack {
            api: studio.api.url(""),
        })
        .expect(1)
        .mount(&assemblyai)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .and(header("authorization", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(transcript_json("completed")))
        .mount(&assemblyai)
        .await;
    studio.step_once(&studio.transcriptions).await;
    studio
        .audio_when(&id, "requested", |a| a["status"] == "requested")
        .await;

    // The service has called back (with the secret header the request named); a forged
    // call is refused.
    expect_problem(
        studio.webhook(&id, "tr_1", "completed", "guess").await,
        401,
        "bad_signature",
    )
    .await;
    studio.step_once(&studio.webhooks).await;
    let done = studio
        .audio_when(&id, "completed", |a| a["status"] == "completed")
        .await;
    assert_eq!(done["text"], "Hello, the shop opens at nine.");
    assert_eq!(done["language"], "en");
    assert_eq!(
        done["words"][0],
        json!({"text": "Hello,", "start_ms": 250, "end_ms": 650, "confidence": 0.97})
    );

    // A repeated webhook appends nothing; an out-of-order "error" for it changes nothing.
    let again: Value = studio
        .webhook(&id, "tr_1", "completed", HOOK_SECRET)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["duplicate"], true);
    let late = studio
        .webhook(&id, "tr_1", "error", HOOK_SECRET)
        .await
        .json::<Value>()
        .await
        .expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    studio.step_once(&studio.webhooks).await;
    let root = studio.env.super_admin();
    let w = eventually(Duration::from_secs(20), "the late webhook", || async {
        let w = studio
            .env
            .get_json(&studio.query.url(&format!("/v1/webhooks/{late}")), &root)
            .await;
        (w["status"] == "processed").then_some(w)
    })
    .await;
    assert_eq!(w["outcome"], "recorded", "{w}");
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'audio' AND event_type = 'TranscriptCompleted'",
    )
    .fetch_one(&studio.env.pool)
    .await
    .expect("count");
    assert_eq!(completed, 1);
    assert_eq!(
        studio.audio_when(&id, "still completed", |_| true).await["status"],
        "completed"
    );

    // The transcript, posted in a thread with the audio attached; a retry posts nothing more.
    let thread = studio.customer_thread("phone-aud").await;
    let attach = || {
        studio
            .env
            .http
            .post(studio.api.url(&format!("/v1/audio/{id}/attach")))
            .bearer_auth(&studio.admin)
            .json(&json!({"thread_id": thread}))
            .send()
    };
    let first: Value = attach().await.expect("sent").json().await.expect("json");
    let second: Value = attach().await.expect("sent").json().await.expect("json");
    assert_eq!(
        first["message_id"], second["message_id"],
        "{first} {second}"
    );
    let messages = eventually(Duration::from_secs(20), "the message", || async {
        let page = studio
            .env
            .get_json(
                &studio
                    .query
                    .url(&format!("/v1/chat/threads/{thread}/messages")),
                &studio.admin,
            )
            .await;
        (page["items"].as_array().map(Vec::len) == Some(1)).then_some(page)
    })
    .await;
    assert_eq!(
        messages["items"][0]["text"],
        "Hello, the shop opens at nine."
    );
    assert_eq!(
        messages["items"][0]["attachment"]["content_type"],
        "audio/mpeg"
    );
}

#[tokio::test]
async fn an_assemblyai_outage_is_retried_then_fails_visibly() {
    let assemblyai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/upload"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    let r = studio
        .upload(&studio.admin, audio_file("audio/wav", 64, 1), "audio/wav")
        .await;
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let attempts = events::audio::MAX_REQUEST_ATTEMPTS as i64;
    for attempt in 1..=attempts {
        studio.step_once(&studio.transcriptions).await;
        let a = studio
            .audio_when(&id, "the attempt recorded", |a| {
                a["attempts"].as_i64() == Some(attempt)
            })
            .await;
        if attempt < attempts {
            assert_eq!(a["status"], "retrying", "{a}");
            assert!(a["next_attempt_at"].is_string());
            // Not before its time.
            assert_eq!(
                studio.transcriptions.step().await.expect("step").processed,
                0
            );
            clock.advance(chrono::Duration::minutes(10));
        } else {
            assert_eq!(a["status"], "failed", "{a}");
            assert!(
                a["last_error"].as_str().is_some_and(|e| e.contains("503")),
                "{a}"
            );
        }
    }
    let uploads = assemblyai
        .received_requests()
        .await
        .unwrap_or_default()
        .len();
    assert_eq!(uploads as i64, attempts, "one upload per attempt, no more");
    studio
        .env
        .assert_snapshots_crossed(events::audio::AUDIO)
        .await;
}

#[tokio::test]
async fn uploads_are_limited_typed_and_private() {
    let assemblyai = MockServer::start().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock).await;
    expect_problem(
        studio
            .upload(&studio.admin, vec![1, 2, 3], "image/png")
            .await,
        415,
        "unsupported_audio",
    )
    .await;
    expect_problem(
        studio.upload(&studio.admin, Vec::new(), "audio/ogg").await,
        400,
        "empty_file",
    )
    .await;
    // A page declared as audio: stored nowhere, sent nowhere.
    let page = b"<!doctype html><html><script>document.location='//evil.example'</script></html>";
    for declared in ["audio/mpeg", "audio/mp4", "audio/ogg"] {
        expect_problem(
            studio.upload(&studio.admin, page.to_vec(), declared).await,
            415,
            "audio_content_mismatch",
        )
        .await;
    }
    expect_problem(
        studio
            .upload(&studio.admin, b"ID".to_vec(), "audio/wav")
            .await,
        415,
        "audio_content_mismatch",
    )
    .await;
    let too_big = audio_file("audio/webm", 100 * 1024 * 1024 + 1, 0);
    expect_problem(
        studio.upload(&studio.admin, too_big, "audio/webm").await,
        413,
        "payload_too_large",
    )
    .await;
    let no_file = studio
        .env
        .http
        .post(studio.api.url("/v1/audio"))
        .bearer_auth(&studio.admin)
        .multipart(reqwest::multipart::Form::new().text("note", "no file here"))
        .send()
        .await
        .expect("sent");
    expect_problem(no_file, 400, "missing_file").await;
    let audio_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'audio'")
            .fetch_one(&studio.env.pool)
            .await
            .expect("count");
    assert_eq!(audio_events, 0, "nothing appended");

    // A keyed upload larger than any buffered body streams through; its retry replays the
    // first answer and appends nothing.
    let keyed = || {
        let part = reqwest::multipart::Part::bytes(audio_file("audio/ogg", 5 * 1024 * 1024, 3))
            .file_name("long")
            .mime_str("audio/ogg")
            .expect("mime");
        studio
            .env
            .http
            .post(studio.api.url("/v1/audio"))
            .bearer_auth(&studio.admin)
            .header("idempotency-key", "voice-note-1")
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    let first = keyed().await.expect("sent");
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("json");
    let again = keyed().await.expect("sent");
    assert_eq!(again.status(), 201);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(
        again.json::<Value>().await.expect("json")["id"],
        first["id"]
    );
    let uploaded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'audio' AND event_type = 'AudioUploaded'",
    )
    .fetch_one(&studio.env.pool)
    .await
    .expect("count");
    assert_eq!(uploaded, 1);
    // A day later the key is a new key: another file under it is a new audio file, and the
    // first one's stored bytes are untouched.
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'
          WHERE key = 'voice-note-1'",
    )
    .execute(&studio.env.pool)
    .await
    .expect("aged");
    let part = reqwest::multipart::Part::bytes(audio_file("audio/ogg", 4096, 9))
        .file_name("next")
        .mime_str("audio/ogg")
        .expect("mime");
    let next = studio
        .env
        .http
        .post(studio.api.url("/v1/audio"))
        .bearer_auth(&studio.admin)
        .header("idempotency-key", "voice-note-1")
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("sent");
    assert_eq!(next.status(), 201);
    assert_ne!(next.json::<Value>().await.expect("json")["id"], first["id"]);
    let (object_key, sha256): (String, String) = sqlx::query_as(
        "SELECT payload->'AudioUploaded'->>'object_key', payload->'AudioUploaded'->>'sha256'
           FROM events WHERE aggregate_type = 'audio' AND aggregate_id = $1
            AND event_type = 'AudioUploaded'",
    )
    .bind(first["id"].as_str().expect("id"))
    .fetch_one(&studio.env.pool)
    .await
    .expect("the first upload");
    let stored = std::fs::read(studio.env.blob_dir.join(&object_key)).expect("the first file");
    assert_eq!(
        events::hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(&stored)),
        sha256,
        "the first file is as it was uploaded"
    );

    // A chatbot user uploads a voice note: they and their tenant's staff read it, nobody
    // else.
    let customer = studio.env.phone_user(&studio.tenant, "phone-voice");
    let r = studio
        .upload(&customer, audio_file("audio/mp4", 1000, 7), "audio/mp4")
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    studio
        .audio_when(&id, "projected", |a| a["status"] == "uploaded")
        .await;
    let (other, _) = create_tenant(
        &studio.env,
        &studio.api,
        &format!("oth{}", &studio.env.prefix[1..9]),
    )
    .await;
    for token in [
        studio.env.admin_of(&other),
        studio.env.phone_user(&studio.tenant, "phone-someone-else"),
    ] {
        let r = studio
            .env
            .http
            .get(studio.query.url(&format!("/v1/audio/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("sent");
        expect_problem(r, 404, "not_found").await;
    }
    let own = studio
        .env
        .get_json(&studio.query.url(&format!("/v1/audio/{id}")), &customer)
        .await;
    assert_eq!(own["content_type"], "audio/mp4");
}

/// Uploads an Ogg file of `len` bytes as `token`.
fn upload_ogg(
    env: &TestEnv,
    api: &Service,
    token: String,
    len: usize,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    let part = reqwest::multipart::Part::bytes(audio_file("audio/ogg", len, 9))
        .file_name("note")
        .mime_str("audio/ogg")
        .expect("mime");
    env.http
        .post(api.url("/v1/audio"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
}

#[tokio::test]
async fn a_user_uploads_so_many_files_an_hour() {
    let assemblyai = MockServer::start().await;
    let studio = Studio::start(&assemblyai, Arc::new(ManualClock::new(Utc::now()))).await;
    let mut config = studio.env.command_config();
    config.ctx.audio.audio_uploads_per_user_per_hour = 2;
    let api = studio.env.spawn_command_api(config).await;
    let customer = studio.env.phone_user(&studio.tenant, "chatty");
    let upload = |token: String| upload_ogg(&studio.env, &api, token, 64);
    for _ in 0..2 {
        assert_eq!(upload(customer.clone()).await.expect("sent").status(), 201);
    }
    let refused = upload(customer.clone()).await.expect("sent");
    assert!(refused.headers().contains_key("retry-after"));
    expect_problem(refused, 429, "rate_limited").await;
    // Another user of the tenant still uploads.
    let other = studio.env.phone_user(&studio.tenant, "quiet");
    assert_eq!(upload(other).await.expect("sent").status(), 201);
    // A refusal of the limit is not the key's answer: once the window has passed, the same
    // key is tried for real, not answered 429 again.
    let keyed = || {
        let part = reqwest::multipart::Part::bytes(audio_file("audio/ogg", 64, 5))
            .file_name("keyed")
            .mime_str("audio/ogg")
            .expect("mime");
        studio
            .env
            .http
            .post(api.url("/v1/audio"))
            .bearer_auth(&customer)
            .header("idempotency-key", "after-the-hour")
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    expect_problem(keyed().await.expect("sent"), 429, "rate_limited").await;
    sqlx::query("DELETE FROM rate_limits")
        .execute(&studio.env.pool)
        .await
        .expect("the hour passes");
    let later = keyed().await.expect("sent");
    assert_eq!(later.status(), 201);
    assert!(later.headers().get("idempotent-replayed").is_none());
    api.stop().await;
}

#[tokio::test]
async fn a_user_uploads_so_many_mebibytes_a_day() {
    let assemblyai = MockServer::start().await;
    let studio = Studio::start(&assemblyai, Arc::new(ManualClock::new(Utc::now()))).await;
    let mut config = studio.env.command_config();
    config.ctx.audio.audio_upload_mib_per_user_per_day = 2;
    let api = studio.env.spawn_command_api(config).await;
    let customer = studio.env.phone_user(&studio.tenant, "talkative");
    let upload = |token: String| upload_ogg(&studio.env, &api, token, 600 * 1024);
    // Each file counts by the mebibyte it starts: two of 600 KiB use the day's 2 MiB.
    for _ in 0..2 {
        assert_eq!(upload(customer.clone()).await.expect("sent").status(), 201);
    }
    let events = studio.env.event_count().await;
    let refused = upload(customer.clone()).await.expect("sent");
    assert!(refused.headers().contains_key("retry-after"));
    expect_problem(refused, 429, "upload_quota_exceeded").await;
    assert_eq!(
        studio.env.event_count().await,
        events,
        "nothing stored or queued"
    );
    let other = studio.env.phone_user(&studio.tenant, "reserved");
    assert_eq!(upload(other).await.expect("sent").status(), 201);
    api.stop().await;
}

/// Uploads a small file as the tenant's admin: its id, once the read model shows it (so
/// the process manager can find it due).
async fn uploaded(studio: &Studio) -> String {
    let r = studio
        .upload(&studio.admin, audio_file("audio/wav", 64, 1), "audio/wav")
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    studio
        .audio_when(&id, "uploaded", |a| a["status"] == "uploaded")
        .await;
    id
}

/// AssemblyAI accepting every upload and every transcript request (as `tr_1`, queued).
async fn accepts_requests(assemblyai: &MockServer) {
    accepts_uploads(assemblyai).await;
    Mock::given(method("POST"))
        .and(path("/v2/transcript"))
        .respond_with(ResponseTemplate::new(200).set_body_json(transcript_json("queued")))
        .mount(assemblyai)
        .await;
}

/// AssemblyAI accepting every upload as `https://cdn.assemblyai.com/upload/abc`.
async fn accepts_uploads(assemblyai: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v2/upload"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"upload_url": "https://cdn.assemblyai.com/upload/abc"})),
        )
        .mount(assemblyai)
        .await;
}

async fn requests_to(assemblyai: &MockServer, method: &str, to: &str) -> usize {
    assemblyai
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == method && r.url.path() == to)
        .count()
}

#[tokio::test]
async fn a_slow_transcript_request_finishes_and_is_sent_once_however_often_it_is_asked() {
    let assemblyai = MockServer::start().await;
    accepts_uploads(&assemblyai).await;
    // Slower than the process manager's old 10 s wait.
    Mock::given(method("POST"))
        .and(path("/v2/transcript"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(transcript_json("queued"))
                .set_delay(Duration::from_secs(12)),
        )
        .mount(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    let id = uploaded(&studio).await;
    // Two process managers (or one and an admin) at once; then a third, a moment later,
    // while the first request is still under way.
    let second = DueProcessor::transcriptions(
        studio.env.pool.clone(),
        &studio.api.url(""),
        TokenKeys::new(SECRET),
        clock.clone(),
    );
    let late = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = studio
            .env
            .http
            .post(studio.api.url(&format!("/v1/audio/{id}/transcribe")))
            .bearer_auth(&studio.admin)
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.expect("json")
    };
    let (a, b, c) = tokio::join!(studio.transcriptions.step(), second.step(), late);
    let (a, b) = (a.expect("step"), b.expect("step"));
    assert_eq!(a.failed + b.failed, 0, "{a:?} {b:?}: nobody timed out");
    assert_eq!(c["status"], "requesting", "{c}");
    let done = studio
        .audio_when(&id, "requested", |a| a["status"] == "requested")
        .await;
    assert_eq!(done["transcript_id"], "tr_1");
    assert_eq!(requests_to(&assemblyai, "POST", "/v2/upload").await, 1);
    assert_eq!(
        requests_to(&assemblyai, "POST", "/v2/transcript").await,
        1,
        "one billed transcript for one file"
    );
}

#[tokio::test]
async fn a_transcript_whose_webhook_never_comes_is_checked_and_finished() {
    let assemblyai = MockServer::start().await;
    accepts_requests(&assemblyai).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    let id = uploaded(&studio).await;
    studio.step_once(&studio.transcriptions).await;
    let requested = studio
        .audio_when(&id, "requested", |a| a["status"] == "requested")
        .await;
    assert!(requested["next_attempt_at"].is_string(), "{requested}");
    // Not checked before its time.
    assert_eq!(
        studio.transcriptions.step().await.expect("step"),
        Default::default()
    );
    // The API key was rotated at the service: the check is refused, and the audio says so.
    let refused = Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "Invalid API key"})))
        .mount_as_scoped(&assemblyai)
        .await;
    clock.advance(chrono::Duration::minutes(10));
    studio.step_once(&studio.transcriptions).await;
    let checked = studio
        .audio_when(&id, "the failed check", |a| a["checks"] == 1)
        .await;
    assert_eq!(checked["status"], "requested");
    assert!(
        checked["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("401")),
        "{checked}"
    );
    drop(refused);
    // Fixed; the next check finds the transcript done.
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(transcript_json("completed")))
        .mount(&assemblyai)
        .await;
    clock.advance(chrono::Duration::minutes(20));
    studio.step_once(&studio.transcriptions).await;
    let done = studio
        .audio_when(&id, "completed", |a| a["status"] == "completed")
        .await;
    assert_eq!(done["text"], "Hello, the shop opens at nine.");
    assert_eq!(done["last_error"], Value::Null);
    assert_eq!(done["next_attempt_at"], Value::Null);
    // The webhook that comes at last changes nothing; one sent with the secret from before
    // a rotation is still accepted.
    let late: Value = studio
        .webhook(&id, "tr_1", "completed", OLD_HOOK_SECRET)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(late["received"], true, "{late}");
    studio.step_once(&studio.webhooks).await;
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'audio' AND event_type = 'TranscriptCompleted'",
    )
    .fetch_one(&studio.env.pool)
    .await
    .expect("count");
    assert_eq!(completed, 1);
}

/// AssemblyAI accepting the request and calling the webhook *before* its answer arrives;
/// the answer itself then comes late, or is lost (`status`: a gateway error after the
/// service accepted).
struct CallsBackFirst {
    api: String,
    status: u16,
}

impl Respond for CallsBackFirst {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: Value = request.body_json().unwrap_or_default();
        let url = body["webhook_url"]
            .as_str()
            .unwrap_or_default()
            .replacen(BACKEND, &self.api, 1);
        let secret = body["webhook_auth_header_value"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = reqwest::Client::new()
                    .post(url)
                    .header("x-webhook-secret", secret)
                    .json(&json!({"transcript_id": "tr_1", "status": "completed"}))
                    .send()
                    .await;
            });
        });
        ResponseTemplate::new(self.status)
            .set_body_json(transcript_json("queued"))
            .set_delay(Duration::from_secs(3))
    }
}

/// The webhook comes while the request's answer is awaited; the answer is `status`. The
/// transcript is finished from the webhook, the one the service made is kept, and nothing is
/// requested twice.
async fn webhook_before_the_answer(status: u16) {
    let assemblyai = MockServer::start().await;
    accepts_uploads(&assemblyai).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    Mock::given(method("POST"))
        .and(path("/v2/transcript"))
        .respond_with(CallsBackFirst {
            api: studio.api.url(""),
            status,
        })
        .mount(&assemblyai)
        .await;
    let id = uploaded(&studio).await;
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(transcript_json_for(&id, "completed")),
        )
        .mount(&assemblyai)
        .await;
    studio
        .audio_when(&id, "uploaded", |a| a["status"] == "uploaded")
        .await;
    studio.step_once(&studio.transcriptions).await;
    // The webhook is received while the request is under way, and processed at once.
    let webhook = eventually(Duration::from_secs(20), "the early webhook", || async {
        let id: Option<String> =
            sqlx::query_scalar("SELECT id::text FROM webhooks WHERE provider = 'assemblyai'")
                .fetch_optional(&studio.env.pool)
                .await
                .expect("query");
        id
    })
    .await;
    studio.step_once(&studio.webhooks).await;
    let root = studio.env.super_admin();
    let w = eventually(Duration::from_secs(20), "the webhook processed", || async {
        let w = studio
            .env
            .get_json(&studio.query.url(&format!("/v1/webhooks/{webhook}")), &root)
            .await;
        (w["status"] == "processed").then_some(w)
    })
    .await;
    assert_eq!(w["outcome"], "applied", "{w}");
    let done = studio
        .audio_when(&id, "completed", |a| a["status"] == "completed")
        .await;
    assert_eq!(done["text"], "Hello, the shop opens at nine.");
    assert_eq!(done["transcript_id"], "tr_1");
    // The answer comes (or fails) after: it changes nothing, and nothing is sent again.
    let outcome = if status == 200 {
        "TranscriptRequested"
    } else {
        "TranscriptionAttemptFailed"
    };
    eventually(Duration::from_secs(20), "the answer's outcome", || async {
        let starts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'audio' AND event_type = 'TranscriptionStarted'",
        )
        .fetch_one(&studio.env.pool)
        .await
        .expect("count");
        // The background request has finished once the slot is free again: a second step
        // may claim nothing (the transcript is complete).
        (starts == 1 && requests_to(&assemblyai, "POST", "/v2/transcript").await == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    clock.advance(chrono::Duration::hours(1));
    studio.transcriptions.step().await.expect("step");
    assert_eq!(
        requests_to(&assemblyai, "POST", "/v2/transcript").await,
        1,
        "one billed transcript ({outcome} after the webhook)"
    );
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'audio' ORDER BY sequence",
    )
    .fetch_all(&studio.env.pool)
    .await
    .expect("events");
    assert_eq!(
        kinds,
        [
            "AudioUploaded",
            "TranscriptionStarted",
            "TranscriptionUploaded",
            "TranscriptRequested",
            "TranscriptCompleted"
        ]
    );
    assert_eq!(
        studio.audio_when(&id, "still completed", |_| true).await["status"],
        "completed"
    );
}

#[tokio::test]
async fn a_webhook_that_beats_the_answer_to_its_request_finishes_the_transcript() {
    webhook_before_the_answer(200).await;
}

#[tokio::test]
async fn a_transcript_whose_request_answer_was_lost_is_kept_not_requested_again() {
    webhook_before_the_answer(502).await;
}

#[tokio::test]
async fn a_failed_transcript_is_asked_for_again_by_a_tenant_admin_only() {
    let assemblyai = MockServer::start().await;
    // The service refuses the file outright: given up at once.
    let refusing = Mock::given(method("POST"))
        .and(path("/v2/upload"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "bad file"})))
        .mount_as_scoped(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    let id = uploaded(&studio).await;
    studio.step_once(&studio.transcriptions).await;
    studio
        .audio_when(&id, "failed", |a| a["status"] == "failed")
        .await;
    drop(refusing);
    accepts_requests(&assemblyai).await;
    let transcribe = |token: String| {
        let url = studio.api.url(&format!("/v1/audio/{id}/transcribe"));
        let http = studio.env.http.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sent")
        }
    };
    // Not by an agent, a chatbot user or another tenant's admin.
    let agent = studio.env.agent_of(&studio.tenant);
    expect_problem(transcribe(agent).await, 403, "forbidden").await;
    let (other, _) = create_tenant(
        &studio.env,
        &studio.api,
        &format!("oth{}", &studio.env.prefix[1..9]),
    )
    .await;
    expect_problem(
        transcribe(studio.env.admin_of(&other)).await,
        404,
        "not_found",
    )
    .await;
    let r = transcribe(studio.admin.clone()).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["status"], "requesting",
        "claimed, sent in the background: {body}"
    );
    let again = studio
        .audio_when(&id, "requested again", |a| a["status"] == "requested")
        .await;
    assert_eq!(again["attempts"], 0);
    assert_eq!(again["last_error"], Value::Null);
    // Completed, it is not sent again.
    studio.webhook(&id, "tr_1", "completed", HOOK_SECRET).await;
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(transcript_json("completed")))
        .mount(&assemblyai)
        .await;
    studio.step_once(&studio.webhooks).await;
    studio
        .audio_when(&id, "completed", |a| a["status"] == "completed")
        .await;
    expect_problem(
        transcribe(studio.admin.clone()).await,
        409,
        "already_transcribed",
    )
    .await;
    assert_eq!(requests_to(&assemblyai, "POST", "/v2/transcript").await, 1);
    // Asking about a completed file costs nothing of the hour's budget...
    for _ in 0..admin_retries_per_hour() {
        assert_eq!(transcribe(studio.admin.clone()).await.status(), 409);
    }
    // ...but a tenant's admins ask again so many times an hour (each retry may be a paid
    // transcript): a file whose requests keep failing.
    let failing = Mock::given(method("POST"))
        .and(path("/v2/upload"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "bad file"})))
        .with_priority(1)
        .mount_as_scoped(&assemblyai)
        .await;
    let other = uploaded(&studio).await;
    let ask = || {
        let url = studio.api.url(&format!("/v1/audio/{other}/transcribe"));
        let http = studio.env.http.clone();
        let token = studio.admin.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sent")
        }
    };
    let mut answers = Vec::new();
    for n in 1..=admin_retries_per_hour() + 1 {
        // Each ask after the last one's outcome is recorded (one under way costs nothing).
        studio
            .audio_when(&other, "the attempt's outcome", |a| {
                a["status"] == "uploaded" || a["status"] == "failed"
            })
            .await;
        let r = ask().await;
        let status = r.status().as_u16();
        answers.push(status);
        if status == 429 {
            // The one ask before, and these: the 409s above counted nothing.
            assert_eq!(n, admin_retries_per_hour(), "{answers:?}");
            break;
        }
        let claimed = r.json::<Value>().await.expect("json")["version"]
            .as_i64()
            .expect("version");
        studio
            .audio_when(&other, "a failed attempt", |a| {
                a["status"] == "failed" && a["version"].as_i64() > Some(claimed)
            })
            .await;
    }
    assert_eq!(answers.last(), Some(&429), "{answers:?}");
    drop(failing);
}

/// More asks than a tenant's admins have an hour.
fn admin_retries_per_hour() -> usize {
    command_api::audio::http::ADMIN_RETRIES_PER_TENANT_PER_HOUR as usize
}

/// A transcript of `words` words.
fn long_transcript(words: usize) -> Value {
    let list: Vec<Value> = (0..words)
        .map(|i| {
            json!({"text": format!("word{i}"), "start": i * 300, "end": i * 300 + 250,
                   "confidence": 0.9, "speaker": null})
        })
        .collect();
    let text = (0..words)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    json!({"id": "tr_1", "status": "completed", "language_code": "en", "confidence": 0.9,
           "text": text, "words": list})
}

#[tokio::test]
async fn a_transcript_too_large_for_an_event_is_kept_whole_and_posted_in_parts() {
    let assemblyai = MockServer::start().await;
    accepts_requests(&assemblyai).await;
    // 15,000 words: about 1.3 MB of JSON, more than the bus takes in one message.
    let transcript = long_transcript(15_000);
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(transcript.clone()))
        .mount(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    let id = uploaded(&studio).await;
    studio.step_once(&studio.transcriptions).await;
    studio
        .audio_when(&id, "requested", |a| a["status"] == "requested")
        .await;
    studio.webhook(&id, "tr_1", "completed", HOOK_SECRET).await;
    studio.step_once(&studio.webhooks).await;
    let done = studio
        .audio_when(&id, "completed", |a| a["status"] == "completed")
        .await;
    let text = transcript["text"].as_str().expect("text");
    assert_eq!(done["text"], text, "the whole text");
    assert_eq!(done["transcript_chars"], text.chars().count());
    assert_eq!(done["words"].as_array().map(Vec::len), Some(15_000));
    assert_eq!(
        done["words"][14_999],
        json!({"text": "word14999", "start_ms": 4_499_700, "end_ms": 4_499_950, "confidence": 0.9})
    );
    // The event names the stored transcript and stays small; it was published (the read
    // model is built from the bus).
    let size: i32 = sqlx::query_scalar(
        "SELECT octet_length(payload::text) FROM events
          WHERE aggregate_type = 'audio' AND event_type = 'TranscriptCompleted'",
    )
    .fetch_one(&studio.env.pool)
    .await
    .expect("size");
    assert!(size < 16 * 1024, "{size} bytes");
    let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantined_events")
        .fetch_one(&studio.env.pool)
        .await
        .expect("count");
    assert_eq!(quarantined, 0);

    // Posted in a thread: as many messages as it takes, in order, the first with the audio.
    let thread = studio.customer_thread("phone-long").await;
    let attach = || async {
        let r = studio
            .env
            .http
            .post(studio.api.url(&format!("/v1/audio/{id}/attach")))
            .bearer_auth(&studio.admin)
            .json(&json!({"thread_id": thread}))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.expect("json")
    };
    let first = attach().await;
    let parts = first["message_ids"].as_array().expect("ids").len();
    assert!(parts >= text.chars().count() / 4_000, "{parts} parts");
    assert_eq!(
        attach().await["message_ids"],
        first["message_ids"],
        "a retry posts nothing more"
    );
    let mut posted = Vec::new();
    let mut url = studio
        .query
        .url(&format!("/v1/chat/threads/{thread}/messages?limit=100"));
    loop {
        let page = studio.env.get_json(&url, &studio.admin).await;
        posted.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => {
                url = studio.query.url(&format!(
                    "/v1/chat/threads/{thread}/messages?limit=100&cursor={c}"
                ))
            }
            None => break,
        }
        if posted.len() >= parts {
            break;
        }
    }
    assert_eq!(posted.len(), parts);
    let joined = posted
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_owned())
        .collect::<Vec<_>>();
    assert!(
        joined.iter().all(|t| t.chars().count() <= 4_096),
        "each message fits"
    );
    let mut sorted = joined.clone();
    sorted.sort_by_key(|t| {
        t.split(' ')
            .next()
            .and_then(|w| w.trim_start_matches("word").parse::<usize>().ok())
    });
    assert_eq!(sorted.join(" "), text, "nothing lost or doubled");
    assert_eq!(
        posted
            .iter()
            .filter(|m| m["attachment"]["content_type"] == "audio/wav")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_lost_answer_is_found_at_the_service_not_requested_again() {
    let assemblyai = MockServer::start().await;
    accepts_uploads(&assemblyai).await;
    // The service accepts the request, but the answer is lost (a gateway error); no
    // webhook comes in time.
    Mock::given(method("POST"))
        .and(path("/v2/transcript"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&assemblyai)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/transcript"))
        .and(wiremock::matchers::query_param("limit", "200"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "page_details": {"limit": 200, "result_count": 2},
            "transcripts": [
                {"id": "tr_other", "status": "completed", "audio_url": "https://cdn.assemblyai.com/upload/other"},
                {"id": "tr_1", "status": "processing", "audio_url": "https://cdn.assemblyai.com/upload/abc"}
            ]
        })))
        .mount(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    let id = uploaded(&studio).await;
    studio.step_once(&studio.transcriptions).await;
    studio
        .audio_when(&id, "the lost answer", |a| a["status"] == "retrying")
        .await;
    clock.advance(chrono::Duration::minutes(1));
    studio.step_once(&studio.transcriptions).await;
    let found = studio
        .audio_when(&id, "requested", |a| a["status"] == "requested")
        .await;
    assert_eq!(found["transcript_id"], "tr_1", "{found}");
    assert_eq!(
        requests_to(&assemblyai, "POST", "/v2/upload").await,
        1,
        "not uploaded again"
    );
    assert_eq!(
        requests_to(&assemblyai, "POST", "/v2/transcript").await,
        1,
        "not requested again"
    );
}

#[tokio::test]
async fn a_webhook_for_a_transcript_the_service_does_not_have_takes_nothing_over() {
    let assemblyai = MockServer::start().await;
    accepts_requests(&assemblyai).await;
    // The service knows neither the transcript the webhook names nor, as it turns out,
    // the one the file requested (deleted at the service).
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_forged"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "not found"})))
        .mount(&assemblyai)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "not found"})))
        .mount(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    let id = uploaded(&studio).await;
    let webhook = studio
        .webhook(&id, "tr_forged", "completed", HOOK_SECRET)
        .await;
    let webhook = webhook.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    studio.step_once(&studio.webhooks).await;
    let root = studio.env.super_admin();
    let w = eventually(Duration::from_secs(20), "the webhook", || async {
        let w = studio
            .env
            .get_json(&studio.query.url(&format!("/v1/webhooks/{webhook}")), &root)
            .await;
        (w["status"] == "processed").then_some(w)
    })
    .await;
    assert_eq!(w["outcome"], "ignored", "{w}");
    let audio = studio.audio_when(&id, "unchanged", |_| true).await;
    assert_eq!(audio["status"], "uploaded", "{audio}");
    assert_eq!(audio["transcript_id"], Value::Null);
    // Its own request goes on; the check finds the service does not know it: failed, and
    // an admin can ask again.
    studio.step_once(&studio.transcriptions).await;
    studio
        .audio_when(&id, "requested", |a| a["status"] == "requested")
        .await;
    clock.advance(chrono::Duration::minutes(10));
    studio.step_once(&studio.transcriptions).await;
    let failed = studio
        .audio_when(&id, "failed", |a| a["status"] == "failed")
        .await;
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not know")),
        "{failed}"
    );
}

#[tokio::test]
async fn a_request_whose_process_died_after_the_upload_is_found_not_made_twice() {
    let assemblyai = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/transcript"))
        .and(wiremock::matchers::query_param("limit", "200"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "transcripts": [
                {"id": "tr_1", "status": "processing", "audio_url": "https://cdn.assemblyai.com/upload/abc"}
            ]
        })))
        .mount(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock.clone()).await;
    let id = uploaded(&studio).await;
    // A command-api claimed the request, uploaded the file and died before the service's
    // answer was recorded: what its events say.
    let at = clock.now();
    for event in [
        json!({"TranscriptionStarted": {"attempt": 1, "until": at + chrono::Duration::minutes(15), "at": at}}),
        json!({"TranscriptionUploaded": {"upload_url": "https://cdn.assemblyai.com/upload/abc", "at": at}}),
    ] {
        studio
            .env
            .append_raw("audio", &id, &studio.tenant, event)
            .await
            .expect("appended");
    }
    studio
        .audio_when(&id, "requesting", |a| a["status"] == "requesting")
        .await;
    // Nothing until the claim lapses; then the transcript the service made is found.
    assert_eq!(
        studio.transcriptions.step().await.expect("step"),
        Default::default()
    );
    clock.advance(chrono::Duration::minutes(16));
    studio.step_once(&studio.transcriptions).await;
    let found = studio
        .audio_when(&id, "requested", |a| a["status"] == "requested")
        .await;
    assert_eq!(found["transcript_id"], "tr_1");
    assert_eq!(requests_to(&assemblyai, "POST", "/v2/upload").await, 0);
    assert_eq!(requests_to(&assemblyai, "POST", "/v2/transcript").await, 0);
}

/// Has uploaded file `id` transcribed as `tr_1`: requested by the process manager, then
/// completed by AssemblyAI's webhook (whose transcript the mock serves).
async fn transcribed(studio: &Studio, id: &str) {
    studio
        .audio_when(id, "uploaded", |a| a["status"] == "uploaded")
        .await;
    studio.step_once(&studio.transcriptions).await;
    studio
        .audio_when(id, "requested", |a| a["status"] == "requested")
        .await;
    studio.webhook(id, "tr_1", "completed", HOOK_SECRET).await;
    studio.step_once(&studio.webhooks).await;
}

#[tokio::test]
async fn a_recording_about_a_customer_is_sealed_for_them_exported_and_gone_with_them() {
    let assemblyai = MockServer::start().await;
    accepts_requests(&assemblyai).await;
    // 1,500 words: more than an event keeps, so the transcript goes to the blob store.
    let transcript = long_transcript(1_500);
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(transcript.clone()))
        .mount(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock).await;
    let thread = studio.customer_thread("phone-recorded").await;
    let upload_for = |thread: &str| {
        let part = reqwest::multipart::Part::bytes(audio_file("audio/wav", 64, 7))
            .mime_str("audio/wav")
            .expect("mime");
        studio
            .env
            .http
            .post(studio.api.url(&format!("/v1/audio?thread_id={thread}")))
            .bearer_auth(&studio.admin)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    // A thread one cannot see, and one without a customer, name no one.
    expect_problem(
        upload_for(&uuid::Uuid::new_v4().to_string())
            .await
            .expect("sent"),
        404,
        "not_found",
    )
    .await;
    let staff_thread: Value = studio
        .env
        .http
        .post(studio.api.url("/v1/chat/threads"))
        .bearer_auth(&studio.admin)
        .json(&json!({}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let staff_thread = staff_thread["id"].as_str().expect("id").to_owned();
    expect_problem(
        upload_for(&staff_thread).await.expect("sent"),
        422,
        "no_customer",
    )
    .await;

    let r = upload_for(&thread).await.expect("sent");
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    transcribed(&studio, &id).await;
    let text = transcript["text"].as_str().expect("text");
    let done = studio
        .audio_when(&id, "completed", |a| a["status"] == "completed")
        .await;
    assert_eq!(done["text"], text, "opened for the tenant's staff");
    // The transcript was sealed by an aggregate past two snapshot intervals: its subject
    // lives on in the snapshot.
    studio.env.assert_snapshots_crossed("audio").await;
    assert_eq!(done["words"].as_array().map(Vec::len), Some(1_500));
    // Neither the store nor the blob store holds it in clear.
    let stored: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(payload::text, ' '), '') FROM events
          WHERE aggregate_type = 'audio'",
    )
    .fetch_one(&studio.env.pool)
    .await
    .expect("events");
    assert!(
        !stored.contains("word1 "),
        "the transcript in clear in the store"
    );
    assert!(
        !stored.contains("word1499"),
        "the words in clear in the store"
    );
    let blobs = crate::support::blob_text(&studio.env.blob_dir);
    assert!(
        !blobs.contains("word1499"),
        "the transcript in clear in the blob store"
    );

    // Their export holds it; the subject is the thread's customer, the chatbot user.
    let subject = events::personal::subject_id("phone_user", &studio.tenant, "phone-recorded");
    let export_url = studio
        .query
        .url(&format!("/v1/privacy/subjects/{subject}/export"));
    let export = studio.env.get_json(&export_url, &studio.admin).await;
    assert_eq!(
        export["recordings"][0]["text"], text,
        "{}",
        export["recordings"]
    );
    assert_eq!(
        export["recordings"][0]["words"].as_array().map(Vec::len),
        Some(1_500)
    );

    // Posted only in a thread of theirs: elsewhere it would be sealed for someone else and
    // outlive their erasure.
    let attach = |to: &str| {
        studio
            .env
            .http
            .post(studio.api.url(&format!("/v1/audio/{id}/attach")))
            .bearer_auth(&studio.admin)
            .json(&json!({"thread_id": to}))
            .send()
    };
    expect_problem(
        attach(&staff_thread).await.expect("sent"),
        422,
        "not_their_thread",
    )
    .await;
    assert_eq!(attach(&thread).await.expect("sent").status(), 201);
    // A second recording about them, not transcribed yet when they are erased.
    let second = upload_for(&thread).await.expect("sent");
    assert_eq!(second.status(), 201);
    let second = second.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    studio
        .audio_when(&second, "uploaded", |a| a["status"] == "uploaded")
        .await;

    // Erased: the transcript reads [erased], the recording and its transcript file are gone,
    // and the service is asked to forget what it made of it.
    Mock::given(method("DELETE"))
        .and(path("/v2/transcript/tr_1"))
        .and(header("authorization", KEY))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": "tr_1", "status": "completed"})),
        )
        .mount(&assemblyai)
        .await;
    let erase =
        crate::support::erase_subject(&studio.env, &studio.api, &studio.admin, &subject).await;
    assert_eq!(erase.status(), 200);
    let deletes: Vec<_> = assemblyai
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "forgotten at the service");
    assert_eq!(deletes[0].url.path(), "/v2/transcript/tr_1");
    assert_eq!(
        deletes[0]
            .headers
            .get("authorization")
            .map(|v| v.as_bytes()),
        Some(KEY.as_bytes()),
        "with the API key"
    );
    // The second is never sent to the service: its request fails for good.
    let uploads = requests_to(&assemblyai, "POST", "/v2/upload").await;
    studio.step_once(&studio.transcriptions).await;
    let failed = studio
        .audio_when(&second, "failed", |a| a["status"] == "failed")
        .await;
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("erased")),
        "{failed}"
    );
    assert_eq!(
        requests_to(&assemblyai, "POST", "/v2/upload").await,
        uploads
    );
    let erased = studio
        .audio_when(&id, "redacted", |a| a["text"] == "[erased]")
        .await;
    let no_words = |a: &Value| a["words"].as_array().is_none_or(Vec::is_empty);
    assert!(no_words(&erased), "{erased}");
    let audio_dir = studio
        .env
        .blob_dir
        .join(format!("tenants/{}/audio/{id}", studio.tenant));
    assert_eq!(
        crate::support::blob_text(&audio_dir),
        "",
        "the recording's files deleted"
    );
    let export = studio.env.get_json(&export_url, &studio.admin).await;
    assert_eq!(export["recordings"][0]["text"], "[erased]");
    // A rebuild from the store shows the same.
    studio._projector.abort();
    projector::rebuild::rebuild(
        &studio.env.pool,
        &projector::audio::AudioProjection,
        &studio.env.keyring(),
    )
    .await
    .expect("rebuild");
    let rebuilt = studio
        .env
        .get_json(&studio.query.url(&format!("/v1/audio/{id}")), &studio.admin)
        .await;
    assert_eq!(rebuilt["text"], "[erased]");
    assert!(no_words(&rebuilt), "{rebuilt}");
    // Nothing new is kept about them.
    expect_problem(
        upload_for(&thread).await.expect("sent"),
        410,
        "subject_erased",
    )
    .await;
}

#[tokio::test]
async fn a_chatbot_users_own_recording_is_about_them_and_its_words_are_sealed_in_the_event() {
    let assemblyai = MockServer::start().await;
    accepts_requests(&assemblyai).await;
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(transcript_json("completed")))
        .mount(&assemblyai)
        .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let studio = Studio::start(&assemblyai, clock).await;
    let user = "phone-self-recorded";
    let customer = studio.env.phone_user(&studio.tenant, user);
    let r = studio
        .upload(&customer, audio_file("audio/ogg", 64, 3), "audio/ogg")
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    transcribed(&studio, &id).await;
    let done = studio
        .audio_when(&id, "completed", |a| a["status"] == "completed")
        .await;
    assert_eq!(done["text"], "Hello, the shop opens at nine.");
    assert_eq!(done["words"][0]["text"], "Hello,");
    let (subject, words, sealed): (Option<String>, Value, Option<String>) = sqlx::query_as(
        "SELECT u.payload->'AudioUploaded'->'subject'->>'id',
                c.payload->'TranscriptCompleted'->'words',
                c.payload->'TranscriptCompleted'->>'words_sealed'
           FROM events u JOIN events c ON c.aggregate_id = u.aggregate_id
          WHERE u.event_type = 'AudioUploaded' AND c.event_type = 'TranscriptCompleted'",
    )
    .fetch_one(&studio.env.pool)
    .await
    .expect("events");
    let me = events::personal::subject_id("phone_user", &studio.tenant, user);
    assert_eq!(
        subject,
        Some(me.to_string()),
        "about the one who recorded it"
    );
    assert_eq!(words, json!([]), "no word in clear");
    let sealed = sealed.expect("the words sealed");
    assert_eq!(
        events::personal::SealedField::parse(&sealed).map(|f| f.subject),
        Some(me)
    );
    let stored: String = sqlx::query_scalar(
        "SELECT string_agg(payload::text, ' ') FROM events WHERE aggregate_type = 'audio'",
    )
    .fetch_one(&studio.env.pool)
    .await
    .expect("events");
    assert!(!stored.contains("shop opens"), "{stored}");
    // Their export holds it.
    let export = studio
        .env
        .get_json(
            &studio
                .query
                .url(&format!("/v1/privacy/subjects/{me}/export")),
            &studio.admin,
        )
        .await;
    assert_eq!(
        export["recordings"][0]["text"],
        "Hello, the shop opens at nine."
    );
    assert_eq!(export["recordings"][0]["words"][1]["text"], "the");
}
