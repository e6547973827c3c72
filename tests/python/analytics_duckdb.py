"""The analyses of `kith analyze`, computed independently with DuckDB over the same Parquet files.

Usage: analytics_duckdb.py EVENTS_DIR IDENTITIES_CSV SPEC_JSON
Prints JSON: per-profile RFM scores, funnel step counts, the cohort retention matrix, a weekly
trend, each profile's interest in each category and its activity trend, each written from the
definitions in docs/analytics.md, not from Kith's code; and the same for a segment (profiles
whose RFM segment, computed here, is in `spec["segment"]`) and the funnel broken down by RFM
segment.
"""

import json
import sys

import duckdb

events_dir, identities_csv, spec_text = sys.argv[1], sys.argv[2], sys.argv[3]
spec = json.loads(spec_text)
zone = spec["timezone"]

db = duckdb.connect()
db.execute("SET TimeZone = 'UTC'")
db.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{events_dir}/*.parquet')")
db.execute(
    f"CREATE VIEW ids AS SELECT * FROM read_csv('{identities_csv}', header = true, all_varchar = true)"
)
# Every event with the profile it belongs to now: by its user id if it has one, else its anonymous
# id, else (records with neither) its email; events with no identifier at all are left out.
db.execute(
    """
    CREATE VIEW attributed AS
    SELECT COALESCE(p.profile_id, 'unattributed:' || COALESCE(e.user_id, e.anonymous_id)) AS profile_id,
           e.timestamp AS ts, e.event, e.revenue, e.message_id
    FROM raw e
    LEFT JOIN ids p
      ON p.id_type = CASE WHEN e.user_id IS NOT NULL THEN 'user_id'
                          WHEN e.anonymous_id IS NOT NULL THEN 'anonymous_id' ELSE 'email' END
     AND p.id_value = COALESCE(e.user_id, e.anonymous_id, lower(trim(e.email)))
    WHERE e.user_id IS NOT NULL OR e.anonymous_id IS NOT NULL OR p.profile_id IS NOT NULL
    """
)

GRID = {
    5: ["New", "Potential loyalists", "Potential loyalists", "Champions", "Champions"],
    4: ["Promising", "Potential loyalists", "Potential loyalists", "Loyal", "Loyal"],
    3: ["About to sleep", "About to sleep", "Need attention", "Loyal", "Loyal"],
    2: ["Hibernating", "Hibernating", "At risk", "At risk", "Can't lose them"],
    1: ["Lost", "Hibernating", "At risk", "At risk", "Can't lose them"],
}

as_of = spec["as_of"]
rfm_rows = db.execute(
    f"""
    WITH per AS (
      SELECT profile_id, max(ts) AS last_ts, count(*) AS frequency,
             round(coalesce(sum(revenue), 0.0), 2) AS monetary
      FROM attributed
      WHERE event = 'Order Completed' AND ts <= TIMESTAMPTZ '{as_of}'
      GROUP BY profile_id),
    ranked AS (
      SELECT *, rank() OVER (ORDER BY last_ts) AS rr, rank() OVER (ORDER BY frequency) AS fr,
             rank() OVER (ORDER BY monetary) AS mr, count(*) OVER () AS n
      FROM per)
    SELECT profile_id,
           CAST(1 + floor(5.0 * (rr - 1) / n) AS INT),
           CAST(1 + floor(5.0 * (fr - 1) / n) AS INT),
           CAST(1 + floor(5.0 * (mr - 1) / n) AS INT),
           monetary, frequency
    FROM ranked
    """
).fetchall()
rfm = {
    p: {"r": r, "f": f, "m": m, "monetary": money, "frequency": n, "segment": GRID[r][f - 1]}
    for (p, r, f, m, money, n) in rfm_rows
}
segments = {}
for score in rfm.values():
    segments[score["segment"]] = segments.get(score["segment"], 0) + 1

# Funnel, loose order: a profile reaches step k when some start has a later event of each next
# step, each after the one before, all within the window of the start. The earliest next event
# is always the best choice, so each step takes the minimum.
steps = spec["funnel_steps"]
window = spec["funnel_window_seconds"]
reached = []
previous = None
for k, step in enumerate(steps):
    name = f"s{k}"
    if k == 0:
        db.execute(
            f"""CREATE TEMP TABLE {name} AS
                SELECT profile_id, ts AS t0, ts AS t FROM attributed WHERE event = ?""",
            [step],
        )
    else:
        db.execute(
            f"""CREATE TEMP TABLE {name} AS
                SELECT p.profile_id, p.t0, min(b.ts) AS t
                FROM {previous} p JOIN attributed b
                  ON b.profile_id = p.profile_id AND b.event = ? AND b.ts > p.t
                 AND b.ts <= p.t0 + to_seconds({window})
                GROUP BY p.profile_id, p.t0""",
            [step],
        )
    reached.append(db.execute(f"SELECT count(DISTINCT profile_id) FROM {name}").fetchone()[0])
    previous = name

# Segments: each profile's RFM segment as computed above ("(none)" for those who never bought).
db.execute("CREATE TEMP TABLE seg (profile_id VARCHAR, segment VARCHAR)")
db.executemany("INSERT INTO seg VALUES (?, ?)", [(p, s["segment"]) for p, s in rfm.items()])
funnel_by_segment = {}
for k in range(len(steps)):
    for segment, n in db.execute(
        f"""SELECT coalesce(g.segment, '(none)'), count(DISTINCT s.profile_id)
            FROM s{k} s LEFT JOIN seg g USING (profile_id) GROUP BY 1"""
    ).fetchall():
        funnel_by_segment.setdefault(segment, [0] * len(steps))[k] = n
chosen = ", ".join("'" + name.replace("'", "''") + "'" for name in spec["segment"])
db.execute(
    f"""CREATE VIEW in_segment AS SELECT * FROM attributed
        WHERE profile_id IN (SELECT profile_id FROM seg WHERE segment IN ({chosen}))"""
)


def cohort_matrix(source):
    """Cohorts: first event of any kind, by month in the zone; classic retention on any event."""
    cohort_rows = db.execute(
        f"""
    WITH firsts AS (SELECT profile_id, min(ts) AS first_ts FROM {source} GROUP BY profile_id),
    cohorts AS (SELECT profile_id, first_ts,
                       date_trunc('month', timezone('{zone}', first_ts)) AS cohort FROM firsts),
    active AS (SELECT DISTINCT c.profile_id, c.cohort,
                      date_diff('month', c.cohort, date_trunc('month', timezone('{zone}', a.ts))) AS period
               FROM {source} a JOIN cohorts c ON a.profile_id = c.profile_id AND a.ts >= c.first_ts)
    SELECT strftime(cohort, '%Y-%m-%d'), period, count(*) FROM active GROUP BY 1, 2
    """
    ).fetchall()
    sizes = db.execute(
        f"""
    WITH firsts AS (SELECT profile_id, min(ts) AS first_ts FROM {source} GROUP BY profile_id)
    SELECT strftime(date_trunc('month', timezone('{zone}', first_ts)), '%Y-%m-%d'), count(*)
    FROM firsts GROUP BY 1
    """
    ).fetchall()
    matrix = {c: {"size": n, "retained": {}} for (c, n) in sizes}
    for cohort, period, n in cohort_rows:
        matrix[cohort]["retained"][str(period)] = n
    return matrix


cohorts = cohort_matrix("attributed")
segment_cohorts = cohort_matrix("in_segment")


def weekly_buyers(source):
    """Trend: buyers per week (Monday) in the zone."""
    return {
        week: n
        for (week, n) in db.execute(
            f"""
        SELECT strftime(date_trunc('week', timezone('{zone}', ts)), '%Y-%m-%d'),
               count(DISTINCT profile_id)
        FROM {source} WHERE event = 'Order Completed' GROUP BY 1
        """
        ).fetchall()
    }


trend = weekly_buyers("attributed")
segment_trend = weekly_buyers("in_segment")

# Paths: the first step after each "Product Added" within a day, Email events left out, repeats
# of the anchor skipped, events at one instant taken in label order; "(end)" when there is none.
anchor = spec["path_anchor"]
first_steps = {
    label: n
    for (label, n) in db.execute(
        """
        WITH ev AS (
          SELECT profile_id, ts,
                 CASE WHEN r.type = 'track' THEN r.event
                      WHEN r.type IN ('page', 'screen') THEN r.type || ': ' || coalesce(r.event, r.page_path, '')
                      ELSE r.type END AS label
          FROM attributed a2 JOIN raw r ON r.message_id = a2.message_id
          WHERE r.event IS NULL OR r.event NOT LIKE 'Email %'),
        anchors AS (SELECT profile_id, ts AS t0, label AS anchor, row_number() OVER () AS id
                    FROM ev WHERE label = ?),
        nexts AS (
          SELECT a.id, e.label,
                 row_number() OVER (PARTITION BY a.id ORDER BY e.ts, e.label) AS rn
          FROM anchors a JOIN ev e ON e.profile_id = a.profile_id
           AND (e.ts > a.t0 OR (e.ts = a.t0 AND e.label > a.anchor))
           AND e.ts <= a.t0 + INTERVAL 1 DAY AND e.label <> a.anchor)
        SELECT coalesce(n.label, '(end)'), count(*)
        FROM anchors a LEFT JOIN nexts n ON n.id = a.id AND n.rn = 1
        GROUP BY 1
        """,
        [anchor],
    ).fetchall()
}

# Preferences: for each profile and category shown interest in by the default events (Product
# Viewed, Product Added), how many such events there were and on how many days (in the zone).
interest = {}
for (profile, category, events, days) in db.execute(
    f"""
    SELECT a.profile_id, json_extract_string(r.properties, '$.category') AS category,
           count(*), count(DISTINCT date_trunc('day', timezone('{zone}', a.ts)))
    FROM attributed a JOIN raw r ON r.message_id = a.message_id
    WHERE a.event IN ('Product Viewed', 'Product Added') AND category IS NOT NULL
    GROUP BY 1, 2
    """
).fetchall():
    interest.setdefault(profile, {})[category] = [events, days]

# Risk: each profile's activity trend (docs/analytics.md), from its events before the last one
# stored (the `as_of` the test gives): its usual gap between active days (cut in the zone) over the
# days since it was last active, at most 1.
activity_trend = {}
for (profile, days, span, since) in db.execute(
    f"""
    WITH before AS (SELECT * FROM attributed WHERE ts < (SELECT max(timestamp) FROM raw))
    SELECT profile_id, count(DISTINCT date_trunc('day', timezone('{zone}', ts))),
           (epoch_us(max(ts)) - epoch_us(min(ts))) / 86400000000.0,
           ((SELECT epoch_us(max(timestamp)) FROM raw) - epoch_us(max(ts))) / 86400000000.0
    FROM before GROUP BY profile_id
    """
).fetchall():
    usual_gap = span / (days - 1) if days >= 2 and span > 0 else float("inf")
    activity_trend[profile] = min(usual_gap / max(since, 1e-9), 1.0)

print(
    json.dumps(
        {
            "rfm": rfm,
            "segments": segments,
            "funnel": reached,
            "cohorts": cohorts,
            "trend": trend,
            "funnel_by_segment": funnel_by_segment,
            "segment_cohorts": segment_cohorts,
            "segment_trend": segment_trend,
            "first_steps": first_steps,
            "interest": interest,
            "activity_trend": activity_trend,
        }
    )
)
