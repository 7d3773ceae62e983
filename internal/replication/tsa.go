package replication

import (
	"context"
	"reflect"

	"github.com/jackc/pgx/v5/pgconn"
)

// pgconn implements target_session_attrs with SQL (SHOW
// transaction_read_only, SELECT pg_is_in_recovery()), which a physical
// replication connection refuses ("cannot execute SQL commands in WAL
// sender"). PostgreSQL 14 and newer report in_hot_standby and
// default_transaction_read_only at startup, which is what libpq itself
// uses; sessionAttrsFromStartup swaps pgconn's check for one that reads
// them, so a multi-host DSN with target_session_attrs=read-write finds the
// primary for `stream` and `backup` the way psql would.
func sessionAttrsFromStartup(cfg *pgconn.Config) {
	if cfg.ValidateConnect == nil {
		return
	}
	same := func(f pgconn.ValidateConnectFunc) bool {
		return reflect.ValueOf(cfg.ValidateConnect).Pointer() == reflect.ValueOf(f).Pointer()
	}
	standby := func(c *pgconn.PgConn) bool { return c.ParameterStatus("in_hot_standby") == "on" }
	readOnly := func(c *pgconn.PgConn) bool {
		return standby(c) || c.ParameterStatus("default_transaction_read_only") == "on"
	}
	var check func(c *pgconn.PgConn) error
	switch {
	case same(pgconn.ValidateConnectTargetSessionAttrsReadWrite):
		check = func(c *pgconn.PgConn) error {
			if readOnly(c) {
				return pgconn.ErrReadOnlyConnection
			}
			return nil
		}
	case same(pgconn.ValidateConnectTargetSessionAttrsReadOnly):
		check = func(c *pgconn.PgConn) error {
			if !readOnly(c) {
				return pgconn.ErrReadWriteConnection
			}
			return nil
		}
	case same(pgconn.ValidateConnectTargetSessionAttrsPrimary):
		check = func(c *pgconn.PgConn) error {
			if standby(c) {
				return pgconn.ErrStandbyConnection
			}
			return nil
		}
	case same(pgconn.ValidateConnectTargetSessionAttrsStandby):
		check = func(c *pgconn.PgConn) error {
			if !standby(c) {
				return pgconn.ErrPrimaryConnection
			}
			return nil
		}
	case same(pgconn.ValidateConnectTargetSessionAttrsPreferStandby):
		// pgconn retries the hosts that failed with NotPreferredError when
		// no standby is found; the error type is not exported to build,
		// so keep the SQL-free part: accept anything.
		check = func(*pgconn.PgConn) error { return nil }
	default:
		return // someone else's check: leave it alone
	}
	cfg.ValidateConnect = func(_ context.Context, c *pgconn.PgConn) error { return check(c) }
}
