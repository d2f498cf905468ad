//! The tenants context's application layer: what a route does beyond one command — today,
//! storing a logo in the blob store before recording it.

use axum::http::StatusCode;
use bytes::Bytes;
use events::http::Problem;
use sha2::{Digest, Sha256};

use super::commands::TenantCommand;
use super::values;
use crate::AppState;

/// Checks an uploaded logo (size, and an image type told by its bytes), stores it under
/// `tenants/{tenant}/logo/{sha256}.{ext}`, and says how to record it.
pub async fn store_logo(
    state: &AppState,
    tenant: &str,
    image: Bytes,
) -> Result<TenantCommand, Problem> {
    if image.len() as u64 > values::MAX_LOGO_BYTES {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "The logo must not exceed 2 MiB.",
        ));
    }
    let content_type = values::sniff_image(&image).ok_or_else(|| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
            "The logo must be a PNG, JPEG or WebP image.",
        )
    })?;
    let sha256 = crate::values::hex(&Sha256::digest(&image));
    let extension = content_type.trim_start_matches("image/");
    let object_key = format!("tenants/{tenant}/logo/{sha256}.{extension}");
    let size_bytes = image.len() as u64;
    state
        .blobs
        .put(
            &object_store::path::Path::from(object_key.as_str()),
            image.into(),
        )
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(TenantCommand::RecordLogo {
        object_key,
        content_type: content_type.to_owned(),
        size_bytes,
        sha256,
    })
}
