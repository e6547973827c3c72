"""The peer side of bench/analytics: the same analyses as `kith analyze`, in DuckDB over the same
Parquet files. Usage: duckdb_analyses.py EVENTS_DIR IDENTITIES_CSV ANALYSIS
(rfm | cohorts | funnel5 | funnel20 | paths); prints the seconds the analysis took."""

import sys
import time

import duckdb

events_dir, identities_csv, analysis = sys.argv[1], sys.argv[2], sys.argv[3]
started = time.perf_counter()
db = duckdb.connect()
db.execute("SET TimeZone = 'UTC'")
db.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{events_dir}/*.parquet')")
db.execute(f"CREATE TABLE ids AS SELECT * FROM read_csv('{identities_csv}', header = true, all_varchar = true)")
db.execute(
    """
    CREATE VIEW attributed AS
    SELECT COALESCE(p.profile_id, 'unattributed:' || COALESCE(e.user_id, e.anonymous_id)) AS profile_id,
           e.timestamp AS ts, e.event, e.type, e.page_path, e.revenue
    FROM raw e
    LEFT JOIN ids p
      ON p.id_type = CASE WHEN e.user_id IS NOT NULL THEN 'user_id'
                          WHEN e.anonymous_id IS NOT NULL THEN 'anonymous_id' ELSE 'email' END
     AND p.id_value = COALESCE(e.user_id, e.anonymous_id, lower(trim(e.email)))
    WHERE e.user_id IS NOT NULL OR e.anonymous_id IS NOT NULL OR p.profile_id IS NOT NULL
    """
)

FUNNEL5 = ["Product Viewed", "Product Added", "Checkout Started", "Payment Info Entered", "Order Completed"]
FUNNEL20 = (["Product Viewed", "Product Added"] * 4 + ["Checkout Started", "Payment Info Entered", "Order Completed"]) * 2
FUNNEL20 = FUNNEL20[:20]


def funnel(steps, window_seconds=7 * 86400):
    previous = None
    counts = []
    for k, step in enumerate(steps):
        name = f"s{k}"
        if k == 0:
            db.execute(f"CREATE TEMP TABLE {name} AS SELECT profile_id, ts AS t0, ts AS t FROM attributed WHERE event = ?", [step])
        else:
            db.execute(
                f"""CREATE TEMP TABLE {name} AS
                    SELECT p.profile_id, p.t0, min(b.ts) AS t FROM {previous} p JOIN attributed b
                      ON b.profile_id = p.profile_id AND b.event = ? AND b.ts > p.t
                     AND b.ts <= p.t0 + to_seconds({window_seconds})
                    GROUP BY p.profile_id, p.t0""",
                [step],
            )
        counts.append(db.execute(f"SELECT count(DISTINCT profile_id) FROM {name}").fetchone()[0])
        previous = name
    return counts


if analysis == "rfm":
    result = db.execute(
        """
        WITH per AS (SELECT profile_id, max(ts) AS last_ts, count(*) AS f, round(coalesce(sum(revenue), 0), 2) AS m
                     FROM attributed WHERE event = 'Order Completed' GROUP BY 1),
        ranked AS (SELECT *, rank() OVER (ORDER BY last_ts) rr, rank() OVER (ORDER BY f) fr,
                          rank() OVER (ORDER BY m) mr, count(*) OVER () n FROM per),
        scored AS (SELECT profile_id, CAST(1 + floor(5.0 * (rr - 1) / n) AS INT) r,
                          CAST(1 + floor(5.0 * (fr - 1) / n) AS INT) f, m FROM ranked)
        SELECT r, f, count(*), sum(m) FROM scored GROUP BY 1, 2
        """
    ).fetchall()
elif analysis == "cohorts":
    result = db.execute(
        """
        WITH firsts AS (SELECT profile_id, min(ts) AS first_ts FROM attributed GROUP BY 1),
        cohorts AS (SELECT profile_id, first_ts, date_trunc('month', first_ts) AS cohort FROM firsts),
        active AS (SELECT DISTINCT c.profile_id, c.cohort,
                          date_diff('month', c.cohort, date_trunc('month', a.ts)) AS period
                   FROM attributed a JOIN cohorts c ON a.profile_id = c.profile_id AND a.ts >= c.first_ts)
        SELECT CAST(cohort AS VARCHAR), period, count(*) FROM active GROUP BY 1, 2
        """
    ).fetchall()
elif analysis == "funnel5":
    result = funnel(FUNNEL5)
elif analysis == "funnel20":
    result = funnel(FUNNEL20)
elif analysis == "paths":
    result = db.execute(
        """
        WITH ev AS (SELECT profile_id, ts,
                           CASE WHEN type = 'track' THEN event
                                WHEN type IN ('page', 'screen') THEN type || ': ' || coalesce(event, page_path, '')
                                ELSE type END AS label
                    FROM attributed),
        numbered AS (SELECT *, lead(label, 1) OVER w AS n1, lead(label, 2) OVER w AS n2,
                            lead(label, 3) OVER w AS n3, lead(label, 4) OVER w AS n4
                     FROM ev WINDOW w AS (PARTITION BY profile_id ORDER BY ts, label))
        SELECT n1, n2, n3, n4, count(*) FROM numbered WHERE label = 'Product Added' GROUP BY ALL
        """
    ).fetchall()
else:
    sys.exit(f"unknown analysis {analysis}")
print(f"{time.perf_counter() - started:.3f}")
