//! Who owns each table (migration 0048 writes it in the catalog) and who may read it: the
//! command side decides from aggregates and its own tables, never from read models, which
//! are rebuildable at will; query-api reads read models, and a command-side table only
//! where the table's comment says why (docs/architecture.md, "Data ownership").

use std::path::Path;

use crate::support::TestEnv;

/// Every Rust source file under `dir`, as text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("readable");
                out.push((path.display().to_string(), text));
            }
        }
    }
    out
}

/// Whether `text` reads `table` in SQL (`FROM table`, `join  table`, any case and spacing),
/// the name ending there.
fn reads(text: &str, table: &str) -> bool {
    let text = text.to_ascii_lowercase();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    ["from", "join"].iter().any(|keyword| {
        text.match_indices(keyword).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let rest = &text[at + keyword.len()..];
            let name = rest.trim_start();
            !before.is_some_and(ident)
                && rest.len() > name.len()
                && name.starts_with(table)
                && !name[table.len()..].chars().next().is_some_and(ident)
        })
    })
}

#[tokio::test]
async fn every_table_names_its_owner_and_no_side_reads_another() {
    let env = TestEnv::new().await;
    let tables: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT c.relname::text, obj_description(c.oid, 'pg_class')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
            AND c.relname NOT LIKE '\\_sqlx%'
          ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .expect("tables");
    assert!(tables.len() > 40, "the schema was read: {tables:?}");
    let unowned: Vec<&String> = tables
        .iter()
        .filter(|(_, c)| !c.as_deref().is_some_and(|c| c.starts_with("owner: ")))
        .map(|(t, _)| t)
        .collect();
    assert!(
        unowned.is_empty(),
        "these tables name no owner (COMMENT ON TABLE … IS 'owner: …'): {unowned:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let command_side = sources(&root.join("command-api/src"));
    let query_side = sources(&root.join("query-api/src"));
    let mut wrong = Vec::new();
    for (table, comment) in &tables {
        let comment = comment.as_deref().unwrap_or_default();
        if comment.starts_with("owner: projector") {
            for (file, text) in &command_side {
                if reads(text, table) {
                    wrong.push(format!("{file} reads the read model {table}"));
                }
            }
        } else if !comment.contains("read by query-api:") {
            for (file, text) in &query_side {
                if reads(text, table) {
                    wrong.push(format!("{file} reads the command-side table {table}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_read_is_told_from_a_longer_name() {
    assert!(reads("SELECT 1 FROM payments WHERE", "payments"));
    assert!(reads("x JOIN payments\n", "payments"));
    assert!(!reads("SELECT 1 FROM payment_lines", "payments"));
    assert!(!reads("INSERT INTO payments", "payments"));
    assert!(reads("select 1 from\n      payments p", "payments"));
    assert!(!reads("SELECT 1 FROM payments_old", "payments"));
    assert!(!reads("datefrom payments", "payments"));
}
