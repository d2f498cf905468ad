//! Storing an uploaded audio file: streamed to the blob store as it arrives, never held
//! whole in memory, and checked on the way (its size, and that it begins as the audio it
//! says it is).

use axum::http::StatusCode;
use bytes::Bytes;
use events::http::Problem;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::http::limits;
use crate::AppState;

/// The largest audio file accepted.
pub const MAX_AUDIO_BYTES: u64 = 100 * 1024 * 1024;

/// Bytes read before the declared type is checked against the content.
const SNIFF_BYTES: usize = 12;

/// Whether a file starting with `prefix` is of `content_type`, by the signature each audio
/// container begins with (a file shorter than [`SNIFF_BYTES`] is checked as it is). The
/// declared type is the client's word; the file is stored under it, served under it and
/// sent for paid transcription, so HTML or an executable declared as audio is refused.
fn looks_like(content_type: &str, prefix: &[u8]) -> bool {
    let at = |offset: usize, magic: &[u8]| prefix.get(offset..offset + magic.len()) == Some(magic);
    match content_type {
        // An ID3 tag, or straight into an MPEG audio frame (11 sync bits).
        "audio/mpeg" => {
            at(0, b"ID3") || (prefix.len() >= 2 && prefix[0] == 0xFF && prefix[1] & 0xE0 == 0xE0)
        }
        "audio/wav" | "audio/x-wav" | "audio/wave" => at(0, b"RIFF") && at(8, b"WAVE"),
        "audio/ogg" => at(0, b"OggS"),
        // An EBML header.
        "audio/webm" => at(0, &[0x1A, 0x45, 0xDF, 0xA3]),
        // An ISO base media file: its first box is `ftyp`.
        "audio/mp4" => at(4, b"ftyp"),
        _ => false,
    }
}

fn not_that_audio() -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "audio_content_mismatch",
        "The file's content is not the audio format its type declares.",
    )
}

fn too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "An audio file is at most 100 MiB.",
    )
}

/// Streams the file to the blob store at `path` (each chunk goes on, in parts, as it
/// arrives: never the whole file in memory), checking its size and that its first bytes are
/// the audio it says it is, and counts its mebibytes against the uploader's day (`volume`).
/// Its size and SHA-256; nothing stored when refused.
pub async fn stream_to_store(
    state: &AppState,
    chunks: impl Stream<Item = Result<Bytes, Problem>>,
    content_type: &str,
    path: &object_store::path::Path,
    volume: &str,
) -> Result<(u64, String), Problem> {
    let upload = state
        .blobs
        .put_multipart(path)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let mut writer = object_store::WriteMultipart::new(upload);
    let mut chunks = std::pin::pin!(chunks);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    // The file's first bytes, until they show whether it is what it says it is.
    let mut head: Option<Vec<u8>> = Some(Vec::with_capacity(SNIFF_BYTES));
    loop {
        let chunk = match chunks.next().await {
            Some(Ok(chunk)) => chunk,
            None => break,
            Some(Err(problem)) => {
                let _ = writer.abort().await;
                return Err(problem);
            }
        };
        size += chunk.len() as u64;
        if size > MAX_AUDIO_BYTES {
            let _ = writer.abort().await;
            // The rest of the body (bounded by the route's limit) is read and dropped, so
            // the client is answered instead of finding its upload cut off.
            while let Some(Ok(_)) = chunks.next().await {}
            return Err(too_large());
        }
        if let Some(prefix) = head.as_mut() {
            let wanted = SNIFF_BYTES - prefix.len();
            prefix.extend_from_slice(&chunk[..chunk.len().min(wanted)]);
            if prefix.len() == SNIFF_BYTES {
                if !looks_like(content_type, prefix) {
                    let _ = writer.abort().await;
                    while let Some(Ok(_)) = chunks.next().await {}
                    return Err(not_that_audio());
                }
                head = None;
            }
        }
        hasher.update(&chunk);
        writer.write(&chunk);
    }
    if size == 0 {
        let _ = writer.abort().await;
        return Err(Problem::bad_request(
            "empty_file",
            "The audio file is empty.",
        ));
    }
    let mib = i32::try_from(size.div_ceil(1 << 20)).unwrap_or(i32::MAX);
    limits::spend(state, volume, limits::Window::Day, mib, i64::MAX)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    if head.is_some_and(|prefix| !looks_like(content_type, &prefix)) {
        let _ = writer.abort().await;
        return Err(not_that_audio());
    }
    writer
        .finish()
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok((size, crate::values::hex(&hasher.finalize())))
}

#[cfg(test)]
mod sniffing_tests {
    use super::looks_like;

    #[test]
    fn each_audio_type_is_known_by_its_signature_and_html_is_none_of_them() {
        let html = b"<!doctype html><script>alert(1)</script>";
        for (content_type, good) in [
            (
                "audio/mpeg",
                &b"ID3\x04\x00\x00\x00\x00\x00\x00\x00\x00"[..],
            ),
            (
                "audio/mpeg",
                &[0xFF, 0xFB, 0x90, 0x64, 0, 0, 0, 0, 0, 0, 0, 0][..],
            ),
            ("audio/wav", &b"RIFF\x24\x08\x00\x00WAVE"[..]),
            ("audio/x-wav", &b"RIFF\x24\x08\x00\x00WAVE"[..]),
            ("audio/ogg", &b"OggS\x00\x02\x00\x00\x00\x00\x00\x00"[..]),
            (
                "audio/webm",
                &[0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x86, 0x81, 1, 0, 0, 0][..],
            ),
            ("audio/mp4", &b"\x00\x00\x00\x20ftypM4A "[..]),
        ] {
            assert!(looks_like(content_type, good), "{content_type}");
            assert!(!looks_like(content_type, html), "HTML as {content_type}");
        }
        assert!(
            !looks_like("audio/wav", b"RIFF\x24\x08\x00\x00AVI "),
            "another RIFF"
        );
        assert!(!looks_like("audio/ogg", b"Og"), "too short to tell");
    }
}
