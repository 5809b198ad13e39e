-- The PostgreSQL ceiling of GET /tests?clinic_id=bench-10 (bench.py, pgbench -M prepared): the
-- app's first-page query of a listing, with its parameters (clinic, after seq 0, 16 rows asked
-- for; 10 there: the listing is complete).
\set first 16
\set start 0
SELECT doc, seq FROM tests WHERE clinic_id = :clinic AND seq > :start ORDER BY seq LIMIT :first;
