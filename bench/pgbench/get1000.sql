-- The PostgreSQL ceiling of GET /tests?clinic_id=bench-1000 (bench.py, pgbench -M prepared): the
-- app's queries of that listing with their parameters, the first page of 16 rows, then the
-- rest after the 16th row's seq (:after, given by bench.py) in a page of up to 1,000.
\set first 16
\set start 0
\set page 1000
SELECT doc, seq FROM tests WHERE clinic_id = :clinic AND seq > :start ORDER BY seq LIMIT :first;
SELECT doc, seq FROM tests WHERE clinic_id = :clinic AND seq > :after ORDER BY seq LIMIT :page;
