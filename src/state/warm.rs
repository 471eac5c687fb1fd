//! Warming the daemon's state connections.
//!
//! A PostgreSQL backend compiles a PL/pgSQL function, and plans each of its
//! statements, at its first call there: about 14 ms for the claim's
//! functions on this project's machine, against about 1 ms once warm. The
//! daemon keeps ten connections and starts up to a hundred runs at one
//! boundary, so the first boundary after a start (and after sqlx replaces a
//! connection, every 30 minutes) paid that ten times while the runs
//! waited: the first minute of the daemon benchmark claimed its last run
//! about twice as late as the next ones. The daemon's pool warms each
//! connection when it opens it (the store is migrated before the pool
//! opens any).

use sqlx::PgConnection;

/// Each function on a claim's path, called on a run that does not exist
/// (-1): nothing is read or written, but every statement they run is
/// compiled and planned. `finish_and_claim` stops at its first check
/// (no such try), after its updates; what it calls after that is warmed
/// by the other calls. A migration that changes one of these signatures
/// must change them here: `the_daemon_warms_its_state_connections` fails
/// otherwise.
const WARM_UP: &str = "
SELECT FROM open_run(-1, '', now(), '', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', 1, 1,
                     '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
SELECT FROM claim_tries(-1, 1, '', 1, '{}', '{}', '{}', '{}', NULL, '{}', '{}', '{}', '{}');
SELECT FROM apply_decisions(-1, '{}', '{}');
SELECT FROM finish_and_claim(-1, '', 1, '', 'success', NULL, NULL, NULL, 'success', 0, '', NULL, '{}', '{}', '{}',
                             1, 1, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', NULL);
";

/// Warms one connection.
pub(super) async fn warm_up(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(WARM_UP).execute(conn).await.map(|_| ())
}
