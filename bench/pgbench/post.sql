-- The PostgreSQL ceiling of POST /tests (bench.py, pgbench -M prepared): the app's create
-- (src/store/pg/store_pg.cpp kInsertSql: the tests row and its version 1 in one statement), one
-- autocommitted transaction per request on the client's own connection (the app instead sends
-- its batches through one writer connection under the advisory write lock).
\set id random(1, 1000000000000)
WITH t AS (INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result, created_at, doc,
                              status, version, updated_at)
  VALUES ('pgbench-' || :id, 'p-1', 'bench-post', 'blood', 'negative', '2026-12-02T00:00:00.000Z',
          '{"test_id":"pgbench-' || :id || '","patient_id":"p-1","clinic_id":"bench-post","test_type":"blood","result":"negative","created_at":"2026-12-02T00:00:00.000Z","status":"final","version":1,"updated_at":"2026-12-02T00:00:00.000Z"}',
          'final', 1, '2026-12-02T00:00:00.000Z')
  ON CONFLICT (test_id) DO NOTHING RETURNING test_id)
INSERT INTO test_versions (test_id, version, clinic_id, status, changed_at, changed_by, reason, doc)
  SELECT test_id, 1, 'bench-post', 'final', '2026-12-02T00:00:00.000Z', 'pgbench', NULL,
         '{"test_id":"pgbench-' || :id || '"}' FROM t RETURNING change_seq;
