-- The C++/PostgreSQL boundary: C++ exceptions become ordinary errors, and the session keeps working.
\set VERBOSITY default
SELECT fly._guard_selftest('ok');
SELECT fly._guard_selftest('cpp');
SELECT 1 AS session_still_works;
SELECT fly._guard_selftest('sql');
SELECT fly._guard_selftest('pg');
SELECT fly._guard_selftest('nonsense');
SELECT fly._guard_selftest(NULL);

-- The SQLSTATE survives the crossing, in both directions.
DO $$
DECLARE
    kind text;
    state text;
BEGIN
    FOREACH kind IN ARRAY ARRAY['cpp', 'sql', 'pg'] LOOP
        BEGIN
            PERFORM fly._guard_selftest(kind);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
            RAISE NOTICE '% -> SQLSTATE %', kind, state;
        END;
    END LOOP;
END $$;

-- Errors inside a transaction behave as usual: the savepoint rolls back, the transaction goes on.
BEGIN;
SAVEPOINT s;
SELECT fly._guard_selftest('cpp');
ROLLBACK TO SAVEPOINT s;
SELECT fly._guard_selftest('ok');
COMMIT;

-- Thousands of crossings, failing and not, leave the backend healthy.
SELECT count(*) AS ok_calls FROM generate_series(1, 2000) AS i,
       LATERAL (SELECT fly._guard_selftest('ok')) AS ok;
DO $$
BEGIN
    FOR i IN 1..2000 LOOP
        BEGIN
            PERFORM fly._guard_selftest(CASE i % 3 WHEN 0 THEN 'cpp' WHEN 1 THEN 'sql' ELSE 'pg' END);
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
END $$;
SELECT 'still alive' AS status;
