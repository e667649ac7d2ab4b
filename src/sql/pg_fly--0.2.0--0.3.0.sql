-- pg_fly 0.2.0 → 0.3.0. CREATE EXTENSION pg_fly installs 0.1.0 and runs the upgrade scripts in order; ALTER
-- EXTENSION pg_fly UPDATE runs this one on an existing 0.2.0 installation. Never edit a released script: add a
-- new upgrade script.
\echo Use "ALTER EXTENSION pg_fly UPDATE" to load this file. \quit
