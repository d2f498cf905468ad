//! `sqlx::migrate!` embeds the migrations at compile time (query-api waits for the schema to
//! reach them), but cargo does not know it reads them: without this, a new migration file
//! would not rebuild the binary, which would then wait for an older schema than its queries
//! read.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
