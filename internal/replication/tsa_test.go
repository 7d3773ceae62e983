package replication

import (
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// Each SQL-based target_session_attrs check pgconn installs is replaced
// (a physical replication connection refuses SQL); "any" and no setting
// leave no check.
func TestSessionAttrsFromStartup(t *testing.T) {
	for _, tsa := range []string{"read-write", "read-only", "primary", "standby", "prefer-standby"} {
		cfg, err := pgconn.ParseConfig("host=a,b target_session_attrs=" + tsa)
		if err != nil {
			t.Fatal(err)
		}
		before := reflect.ValueOf(cfg.ValidateConnect).Pointer()
		sessionAttrsFromStartup(cfg)
		if cfg.ValidateConnect == nil || reflect.ValueOf(cfg.ValidateConnect).Pointer() == before {
			t.Errorf("%s: pgconn's SQL check was kept", tsa)
		}
	}
	for _, dsn := range []string{"host=a", "host=a target_session_attrs=any"} {
		cfg, _ := pgconn.ParseConfig(dsn)
		sessionAttrsFromStartup(cfg)
		if cfg.ValidateConnect != nil {
			t.Errorf("%s: a check was added", dsn)
		}
	}
}
