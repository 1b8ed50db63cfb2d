-- Payroll: the queries of payments/payroll, loaded into payments.platform.db.Q.

-- name: create_payroll_job
SELECT status, body, replayed, stored, parties
  FROM create_payroll_job_v1($1, $2, $3, $4, $5, $6, $7::text[], $8::text[], $9::text[], $10::text[],
                             $11, $12);

-- name: payroll_job_of_user
-- The owner's job, or any job for an admin ($3).
SELECT o.body::text FROM payroll_job_out o WHERE o.id = $1 AND (o.user_id = $2 OR $3::boolean);

-- name: payroll_items
-- A page of a job's items in index order, after index $2, optionally of one status.
SELECT o.item_index AS id, o.body::text
  FROM payroll_item_out o
 WHERE o.job_id = $1 AND o.item_index > $2 AND ($3::text IS NULL OR o.status = $3)
 ORDER BY o.item_index
 LIMIT $4;

-- name: claim_payroll_job
SELECT id FROM claim_payroll_job_v1($1, $2) AS id;

-- name: pay_payroll_batch
SELECT job_status, checkpoint, paid, failed, parties FROM pay_payroll_batch_v1($1, $2, $3, $4);

-- name: release_payroll_jobs
SELECT release_payroll_jobs_v1($1, $2);

-- name: payroll_queue_stats
-- Jobs waiting and jobs being paid, for /queue/stats: read from the partial index of jobs not
-- yet finished, so it costs the same however many jobs have ever run.
SELECT count(*) FILTER (WHERE status = 'QUEUED') AS queued,
       count(*) FILTER (WHERE status = 'PROCESSING') AS processing
  FROM payroll_job WHERE status IN ('QUEUED', 'PROCESSING');
