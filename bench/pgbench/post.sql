-- The PostgreSQL ceiling of POST /tests (bench.py, pgbench -M prepared): the app's INSERT, one
-- autocommitted transaction per request on the client's own connection (the app instead sends
-- its batches through one writer connection under the advisory write lock).
\set id random(1, 1000000000000)
INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result, created_at, doc)
  VALUES ('pgbench-' || :id, 'p-1', 'bench-post', 'blood', 'negative', '2026-12-02T00:00:00.000Z',
          '{"test_id":"pgbench-' || :id || '","patient_id":"p-1","clinic_id":"bench-post","test_type":"blood","result":"negative","created_at":"2026-12-02T00:00:00.000Z"}')
  ON CONFLICT (test_id) DO NOTHING RETURNING seq;
