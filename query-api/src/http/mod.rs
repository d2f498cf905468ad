//! Shared plumbing of the query handlers (no context's rules live here).

/// `ETag` of every JSON answer, and `304` for `If-None-Match`.
pub mod conditional;
/// Filter values of list queries.
pub mod filters;
/// Read-your-writes: waiting (bounded) for a version a command answered with.
pub mod freshness;
/// Where the OpenAPI document comes from.
pub mod openapi;
/// Keyset pagination and `WHERE` clauses of the filters asked for.
pub mod page;
/// Whose rows a caller reads.
pub mod scope;
