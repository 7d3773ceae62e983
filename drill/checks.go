package drill

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// amcheck runs amcheck in every database that accepts connections.
func (d *drill) amcheck(ctx context.Context, conn *pgx.Conn) {
	var available bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck')").Scan(&available); err != nil {
		d.rep.problem(ProblemAmcheck, "", "%v", err)
		return
	}
	if !available {
		d.rep.Amcheck.Skipped = "this server has no amcheck extension (packaged servers ship it; from source: contrib/amcheck)"
		return
	}
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
	if err != nil {
		d.rep.problem(ProblemAmcheck, "", "%v", err)
		return
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		d.rep.problem(ProblemAmcheck, "", "%v", err)
		return
	}
	d.rep.Amcheck.Ran = true
	for _, db := range dbs {
		if ctx.Err() != nil {
			return
		}
		c, err := d.srv.connect(ctx, d.opts.DBUser, db)
		if err != nil {
			d.rep.problem(ProblemAmcheck, db, "cannot connect: %v", err)
			continue
		}
		d.amcheckDB(ctx, c, db)
		c.Close(context.Background())
		d.rep.Amcheck.Databases++
	}
}

type relation struct {
	oid  uint32
	name string
}

func relations(ctx context.Context, c *pgx.Conn, sql string) ([]relation, error) {
	rows, err := c.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (relation, error) {
		var rel relation
		err := r.Scan(&rel.oid, &rel.name)
		return rel, err
	})
}

func (d *drill) amcheckDB(ctx context.Context, c *pgx.Conn, db string) {
	if _, err := c.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS amcheck"); err != nil {
		d.rep.problem(ProblemAmcheck, db, "cannot create the amcheck extension: %v", err)
		return
	}
	var schema string
	var heap bool
	if err := c.QueryRow(ctx, `SELECT quote_ident(n.nspname), EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = 'verify_heapam' AND p.pronamespace = n.oid)
		FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'`).Scan(&schema, &heap); err != nil {
		d.rep.problem(ProblemAmcheck, db, "%v", err)
		return
	}
	indexes, err := relations(ctx, c, `SELECT c.oid, c.oid::regclass::text FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
		WHERE a.amname = 'btree' AND c.relkind = 'i' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't'
		ORDER BY 2`)
	if err != nil {
		d.rep.problem(ProblemAmcheck, db, "%v", err)
		return
	}
	for _, ix := range indexes {
		if ctx.Err() != nil {
			return
		}
		if _, err := c.Exec(ctx, "SELECT "+schema+".bt_index_check($1::oid::regclass)", ix.oid); err != nil {
			d.rep.problem(ProblemAmcheck, db+": index "+ix.name, "%v", err)
		}
		d.rep.Amcheck.Indexes++
	}
	if !heap {
		return
	}
	tables, err := relations(ctx, c, `SELECT c.oid, c.oid::regclass::text FROM pg_class c
		WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' ORDER BY 2`)
	if err != nil {
		d.rep.problem(ProblemAmcheck, db, "%v", err)
		return
	}
	for _, t := range tables {
		if ctx.Err() != nil {
			return
		}
		d.rep.Amcheck.Tables++
		rows, err := c.Query(ctx, "SELECT blkno, coalesce(offnum, 0), msg FROM "+schema+
			".verify_heapam(relation => $1::oid::regclass, check_toast => true) LIMIT 3", t.oid)
		if err != nil {
			d.rep.problem(ProblemAmcheck, db+": table "+t.name, "%v", err)
			continue
		}
		var found []string
		for rows.Next() {
			var blk int64
			var off int32
			var msg string
			if err := rows.Scan(&blk, &off, &msg); err == nil {
				found = append(found, fmt.Sprintf("block %d offset %d: %s", blk, off, msg))
			}
		}
		if err := rows.Err(); err != nil {
			found = append(found, err.Error())
		}
		if len(found) > 0 {
			d.rep.problem(ProblemAmcheck, db+": table "+t.name, "%s", strings.Join(found, "; "))
		}
	}
}

// checkSQL runs the --check-sql statements; each that returns rows must
// return at least one.
func (d *drill) checkSQL(ctx context.Context) {
	db := d.opts.CheckDatabase
	if db == "" {
		db = "postgres"
	}
	c, err := d.srv.connect(ctx, d.opts.DBUser, db)
	if err != nil {
		d.rep.problem(ProblemCheckSQL, d.opts.CheckSQLName, "cannot connect to database %s: %v", db, err)
		return
	}
	defer c.Close(context.Background())
	mrr := c.PgConn().Exec(ctx, d.opts.CheckSQL)
	for mrr.NextResult() {
		d.rep.CheckQueries++
		rr := mrr.ResultReader()
		returnsRows := len(rr.FieldDescriptions()) > 0
		rows := 0
		for rr.NextRow() {
			rows++
		}
		if _, err := rr.Close(); err != nil {
			d.rep.problem(ProblemCheckSQL, fmt.Sprintf("%s statement %d", d.opts.CheckSQLName, d.rep.CheckQueries), "%v", err)
			continue
		}
		if returnsRows && rows == 0 {
			d.rep.problem(ProblemCheckSQL, fmt.Sprintf("%s statement %d", d.opts.CheckSQLName, d.rep.CheckQueries), "returned no rows")
		}
	}
	if err := mrr.Close(); err != nil && len(d.rep.Problems) == 0 {
		d.rep.problem(ProblemCheckSQL, d.opts.CheckSQLName, "%v", err)
	}
}
