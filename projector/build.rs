//! `sqlx::migrate!` embeds the migrations at compile time, but cargo does not know it reads
//! them: without this, a new migration file would not rebuild the binary, which would then
//! refuse a database migrated by a newer one.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
