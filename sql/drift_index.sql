-- fly._subscription_user_indexed(): whether the drift pass's batches on the user column (`user_id > $1 ORDER BY
-- user_id`) are index scans. Only an index that can serve that order counts; with none, every batch is a full read
-- and the pass reads large batches.
SET search_path = public, fly;
SELECT table_name AS saved_table, user_column AS saved_user_column, tier_column AS saved_tier_column
  FROM fly.tier_source \gset
-- The column's collation is "C" and the other one "POSIX": both exist in every database, whatever its locale, and
-- are not the same collation.
CREATE TABLE drift_index_subs (user_id text COLLATE "C", tier text);
SELECT fly.attach_tier_trigger('drift_index_subs');
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS no_index;

-- Indexes the batch cannot walk in the column's order.
CREATE INDEX drift_index_pattern ON drift_index_subs (user_id text_pattern_ops);
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS pattern_ops;
DROP INDEX drift_index_pattern;
CREATE INDEX drift_index_posix ON drift_index_subs (user_id COLLATE "POSIX");
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS other_collation;
DROP INDEX drift_index_posix;
CREATE INDEX drift_index_lower ON drift_index_subs (lower(user_id));
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS expression;
DROP INDEX drift_index_lower;
CREATE INDEX drift_index_nulls_first ON drift_index_subs (user_id NULLS FIRST);
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS nulls_first;
DROP INDEX drift_index_nulls_first;
CREATE INDEX drift_index_desc_nulls_last ON drift_index_subs (user_id DESC NULLS LAST);
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS desc_nulls_last;
DROP INDEX drift_index_desc_nulls_last;
CREATE INDEX drift_index_partial ON drift_index_subs (user_id) WHERE tier IS NOT NULL;
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS partial;
DROP INDEX drift_index_partial;
CREATE INDEX drift_index_second ON drift_index_subs (tier, user_id);
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS second_key;
DROP INDEX drift_index_second;
CREATE INDEX drift_index_hash ON drift_index_subs USING hash (user_id);
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS hash;
DROP INDEX drift_index_hash;

-- Indexes it can: a plain one, one in descending order (read backward), the first key of several.
CREATE INDEX drift_index_plain ON drift_index_subs (user_id);
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS plain;
DROP INDEX drift_index_plain;
CREATE INDEX drift_index_desc ON drift_index_subs (user_id DESC);
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS descending;
DROP INDEX drift_index_desc;
CREATE INDEX drift_index_first ON drift_index_subs (user_id COLLATE "C" text_ops, tier);
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS first_of_two;
-- One usable index among unusable ones is enough.
CREATE INDEX drift_index_pattern ON drift_index_subs (user_id text_pattern_ops);
CREATE INDEX drift_index_posix ON drift_index_subs (user_id COLLATE "POSIX");
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS one_of_three;
DROP INDEX drift_index_first;
SELECT fly._subscription_user_indexed('drift_index_subs', 'user_id') AS none_of_two;

-- A partitioned table: indexed only when every partition is, by an index that qualifies.
SELECT fly.detach_tier_trigger();
CREATE TABLE drift_index_parts (user_id text COLLATE "C", region text, tier text) PARTITION BY LIST (region);
CREATE TABLE drift_index_eu PARTITION OF drift_index_parts FOR VALUES IN ('eu');
CREATE TABLE drift_index_us PARTITION OF drift_index_parts FOR VALUES IN ('us');
SELECT fly.attach_tier_trigger('drift_index_parts');
SELECT fly._subscription_user_indexed('drift_index_parts', 'user_id') AS parts_no_index;
CREATE INDEX drift_index_eu_user ON drift_index_eu (user_id);
SELECT fly._subscription_user_indexed('drift_index_parts', 'user_id') AS parts_one_indexed;
CREATE INDEX drift_index_us_user ON drift_index_us (user_id COLLATE "POSIX");
SELECT fly._subscription_user_indexed('drift_index_parts', 'user_id') AS parts_other_collation;
DROP INDEX drift_index_us_user;
CREATE INDEX drift_index_us_user ON drift_index_us (user_id text_pattern_ops);
SELECT fly._subscription_user_indexed('drift_index_parts', 'user_id') AS parts_pattern_ops;
DROP INDEX drift_index_us_user;
CREATE INDEX drift_index_us_user ON drift_index_us (user_id DESC);
SELECT fly._subscription_user_indexed('drift_index_parts', 'user_id') AS parts_all_indexed;
DROP INDEX drift_index_eu_user, drift_index_us_user;
-- An index on the partitioned table is made on every partition.
CREATE INDEX drift_index_parts_user ON drift_index_parts (user_id);
SELECT fly._subscription_user_indexed('drift_index_parts', 'user_id') AS parts_parent_index;

-- Clean up; the earlier tests' table is attached again.
SELECT fly.attach_tier_trigger(:'saved_table', :'saved_user_column', :'saved_tier_column');
DROP TABLE drift_index_subs, drift_index_parts;
