-- Installing the extension and the state of a fresh node.
CREATE EXTENSION registry;
\dx registry

SELECT node_name, database, state, clock_ready, last_seq, first_seq,
       change_log_capacity, change_log_used, acceptor_capacity, acceptors_used,
       acceptor_ops, table_capacity, tables_used, digest_buckets, max_key_length,
       origins_used, shared_memory_bytes > 0 AS has_shared_memory
  FROM registry.node;

-- the roles the extension creates
SELECT rolname, rolcanlogin FROM pg_roles
 WHERE rolname IN ('registry_admin', 'registry_peer') ORDER BY 1;

-- installing twice, or in another database, is refused
CREATE EXTENSION registry;
CREATE DATABASE registry_other;
\c registry_other
CREATE EXTENSION registry;
\c contrib_regression
DROP DATABASE registry_other;

-- error_of(sql): the SQLSTATE and message of a statement's error, for the
-- tests that follow (long numbers, such as versions, vary from run to run)
CREATE FUNCTION error_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9]{10,}', 'N', 'g');
END $$;
