#include "pgfly/pgfly_health_store.hpp"

#include <utility>

#include "pgfly/core/json.hpp"
#include "pgfly/pg/sql_values.hpp"

namespace pgfly {

using pg::ToInt;

HealthPage
LoadHealthTargets(pg::SpiConnection &spi, const HealthCursor &cursor, int limit) {
	// A keyset page over user_fly_apps_health_order; the pass ends before the apps it has checked itself (their
	// last_health_check_at is later than its start).
	auto rows = spi.Query(
		"SELECT id, user_id, fly_app_name, fly_machine_id, tier, "
		"EXTRACT(EPOCH FROM pg_catalog.now() OPERATOR(pg_catalog.-) "
		"CASE WHEN fly_machine_created_at OPERATOR(pg_catalog.>) pg_catalog.now() THEN pg_catalog.now() "
		"ELSE fly_machine_created_at END), "
		"pending_machine_operation IS NOT NULL, "
		// The cursor's instants travel as microseconds since the epoch: exact, whatever the worker's DateStyle
	    // and TimeZone (a zone abbreviation need not read back as the same instant). NULL: -infinity.
		"CASE WHEN pg_catalog.isfinite(last_health_check_at) THEN (EXTRACT(EPOCH FROM last_health_check_at) "
		"OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8 END, "
		"(EXTRACT(EPOCH FROM COALESCE('epoch'::pg_catalog.timestamptz OPERATOR(pg_catalog.+) ($3::pg_catalog.float8 "
		"OPERATOR(pg_catalog.*) '1 microsecond'::pg_catalog.interval), pg_catalog.now())) OPERATOR(pg_catalog.*) "
		"1000000)::pg_catalog.int8 FROM fly.user_fly_apps "
		"WHERE deleted_at IS NULL AND status OPERATOR(pg_catalog.=) 'active' "
		"AND (COALESCE(last_health_check_at, '-infinity'::pg_catalog.timestamptz), id) "
		"OPERATOR(pg_catalog.>) (COALESCE('epoch'::pg_catalog.timestamptz OPERATOR(pg_catalog.+) "
		"($1::pg_catalog.float8 "
		"OPERATOR(pg_catalog.*) '1 microsecond'::pg_catalog.interval), '-infinity'::pg_catalog.timestamptz), "
		"$2::pg_catalog.int8) "
		"AND COALESCE(last_health_check_at, '-infinity'::pg_catalog.timestamptz) OPERATOR(pg_catalog.<) "
		"COALESCE('epoch'::pg_catalog.timestamptz OPERATOR(pg_catalog.+) ($3::pg_catalog.float8 OPERATOR(pg_catalog.*) "
		"'1 microsecond'::pg_catalog.interval), pg_catalog.now()) "
		"AND fly_machine_id IS NOT NULL "
		"ORDER BY COALESCE(last_health_check_at, '-infinity'::pg_catalog.timestamptz), id LIMIT $4::pg_catalog.int4",
		{cursor.after_checked_at, std::to_string(cursor.after_id), cursor.pass_started, std::to_string(limit)}, true);
	HealthPage page;
	page.cursor = cursor;
	page.targets.reserve(rows.size());
	for (const auto &row : rows) {
		HealthTarget target{ToInt(row[0]), row[1].value_or(""), row[2].value_or(""), row[3].value_or(""), row[4]};
		if (row[5]) {
			target.machine_age_seconds = std::stod(*row[5]);
		}
		target.pending_create = row[6] == std::string("t");
		page.targets.push_back(std::move(target));
		page.cursor.after_checked_at = row[7];
		page.cursor.after_id = page.targets.back().app_id;
		page.cursor.pass_started = row[8];
	}
	page.more = static_cast<int>(rows.size()) >= limit;
	return page;
}

HealthBatchResult
RecordHealthBatch(pg::SpiConnection &spi, const std::vector<HealthRecord> &records) {
	HealthBatchResult result;
	if (records.empty()) {
		return result;
	}
	// One JSON parameter: nothing Fly sent can shift the rows.
	Json input = Json::Array();
	for (const auto &record : records) {
		Json row = Json::Object();
		row.Set("id", Json::Integer(record.app_id));
		row.Set("health", record.health ? Json::String(*record.health) : Json::Null());
		row.Set("details", Json::String(record.details_json));
		input.Append(row);
	}
	auto rows = spi.Query(
		"WITH input AS (SELECT DISTINCT ON (i.id) i.id, i.health, i.details::pg_catalog.jsonb AS details "
		"FROM pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) AS i (id pg_catalog.int8, health pg_catalog.text, "
		"details pg_catalog.text) ORDER BY i.id), "
		// Row by row (a lateral look-up per id, in id order), then by an id array: both scans of the table are
	    // primary-key look-ups whatever the statistics say, never a scan of every app (nor of the partial index
	    // user_fly_apps_health_order, which a condition on status would make eligible: OFFSET 0 keeps it out).
	    // The locked row's latest version tells whether it is still active.
		"old AS (SELECT l.id, l.health_status FROM input i CROSS JOIN LATERAL (SELECT a.id, a.health_status, "
		"a.deleted_at, a.status FROM fly.user_fly_apps a WHERE a.id OPERATOR(pg_catalog.=) i.id "
		"OFFSET 0 FOR UPDATE OF a SKIP LOCKED) l "
		"WHERE l.deleted_at IS NULL AND l.status OPERATOR(pg_catalog.=) 'active'), "
		"done AS (UPDATE fly.user_fly_apps a SET health_status = COALESCE(i.health, a.health_status), "
		"last_health_check_at = pg_catalog.now() FROM old, input i WHERE a.id OPERATOR(pg_catalog.=) ANY "
		"((SELECT pg_catalog.array_agg(id) FROM old)::pg_catalog.int8[]) AND a.id OPERATOR(pg_catalog.=) old.id "
		"AND i.id OPERATOR(pg_catalog.=) old.id "
		"RETURNING a.id, a.user_id, a.status, old.health_status AS before, a.health_status AS after, i.details), "
		"events AS (INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
		"SELECT id, user_id, 'health_changed', status, details OPERATOR(pg_catalog.||) "
		"pg_catalog.jsonb_build_object('from', before, 'to', after) FROM done "
		"WHERE before IS DISTINCT FROM after ORDER BY id RETURNING 1) "
		"SELECT (SELECT pg_catalog.count(*) FROM done), (SELECT pg_catalog.count(*) FROM events)",
		{input.Dump()});
	result.recorded = ToInt(rows.at(0).at(0));
	result.events = ToInt(rows.at(0).at(1));
	if (result.events == 0) {
		spi.Query("SELECT pg_catalog.set_config('synchronous_commit', 'off', true)", {});
	}
	return result;
}

bool
RecordDuplicateDestroy(pg::SpiConnection &spi, const HealthTarget &target, const std::string &machine_id) {
	auto rows = spi.Query(
		"SELECT a.status FROM fly.user_fly_apps a WHERE a.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
		"AND a.deleted_at IS NULL AND a.status OPERATOR(pg_catalog.=) 'active' "
		"AND a.fly_machine_id OPERATOR(pg_catalog.=) $2 AND a.pending_machine_operation IS NULL "
		"AND NOT EXISTS (SELECT 1 FROM fly.reconcile_queue q WHERE q.user_id OPERATOR(pg_catalog.=) a.user_id "
		"AND q.claimed_at IS NOT NULL) FOR UPDATE OF a SKIP LOCKED",
		{std::to_string(target.app_id), target.machine_id});
	if (rows.empty()) {
		return false;
	}
	Json details = Json::Object();
	details.Set("machine_id", Json::String(machine_id));
	details.Set("kept_machine_id", Json::String(target.machine_id));
	details.Set("found_by", Json::String("health_check"));
	spi.Query("INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
	          "VALUES ($1::pg_catalog.int8, $2::pg_catalog.uuid, 'duplicate_machine_destroyed', $3, "
	          "$4::pg_catalog.jsonb)",
	          {std::to_string(target.app_id), target.user_id, rows[0][0], details.Dump()});
	return true;
}

bool
RecordHealth(pg::SpiConnection &spi, const HealthTarget &target, const char *health, const std::string &event,
             const std::string &details_json) {
	auto rows =
		spi.Query("WITH old AS (SELECT id, health_status FROM fly.user_fly_apps WHERE id OPERATOR(pg_catalog.=) "
	              "$1::pg_catalog.int8 AND deleted_at IS NULL AND status OPERATOR(pg_catalog.=) 'active' "
	              "FOR UPDATE SKIP LOCKED) "
	              "UPDATE fly.user_fly_apps a SET health_status = COALESCE($2, a.health_status), "
	              "last_health_check_at = pg_catalog.now() FROM old WHERE a.id OPERATOR(pg_catalog.=) old.id "
	              "RETURNING old.health_status, a.health_status, a.status",
	              {std::to_string(target.app_id), health ? pg::Value(health) : std::nullopt});
	if (rows.empty()) {
		// Another transaction holds the row (an operator's, say): rather than stall the loop for lock_timeout,
		// this result is dropped; the row keeps its old last_health_check_at and comes first in the next pass.
		if (!spi.Query("SELECT 1 FROM fly.user_fly_apps WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
		               "AND deleted_at IS NULL AND status OPERATOR(pg_catalog.=) 'active'",
		               {std::to_string(target.app_id)}, true)
		         .empty()) {
			pg::PgGuard([&]() {
				elog(DEBUG1, "pg_fly worker: the health of %s is recorded in a later pass: its row is locked",
				     target.app_name.c_str());
			});
		}
		return false;
	}
	std::string type = event;
	if (type.empty() && rows[0][0] != rows[0][1]) {
		type = "health_changed";
	}
	if (!type.empty()) {
		spi.Query(
			"INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
			"VALUES ($1::pg_catalog.int8, $2::pg_catalog.uuid, $3, $4, "
			"$5::pg_catalog.jsonb OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('from', $6::pg_catalog.text, "
			"'to', $7::pg_catalog.text))",
			{std::to_string(target.app_id), target.user_id, type, rows[0][2], details_json, rows[0][0], rows[0][1]});
	}
	return true;
}

std::vector<std::string>
RecordOrphans(pg::SpiConnection &spi, const std::string &org_slug,
              const std::vector<std::pair<std::string, std::string>> &apps_with_prefix) {
	// One JSON parameter, not array literals pasted together: nothing Fly sends can shift or break the rows.
	Json apps = Json::Array();
	for (const auto &[name, id] : apps_with_prefix) {
		Json app = Json::Object();
		app.Set("name", Json::String(name));
		app.Set("id", id.empty() ? Json::Null() : Json::String(id));
		apps.Append(app);
	}
	const std::string apps_json = apps.Dump();
	spi.Query(
		"INSERT INTO fly.orphan_apps (fly_app_name, fly_org_slug, fly_app_id) "
		"SELECT DISTINCT ON (n.name) n.name, $2, n.id "
		"FROM pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) AS n (name pg_catalog.text, id pg_catalog.text) "
		"WHERE NOT EXISTS (SELECT 1 FROM fly.user_fly_apps a WHERE a.fly_app_name OPERATOR(pg_catalog.=) n.name "
		"AND a.deleted_at IS NULL) "
		// Seen again after it was gone: a new orphan under an old name, found afresh.
		"ON CONFLICT (fly_app_name) DO UPDATE SET last_seen_at = pg_catalog.now(), deleted_at = NULL, "
		"found_at = CASE WHEN fly.orphan_apps.deleted_at IS NULL THEN fly.orphan_apps.found_at "
		"ELSE pg_catalog.now() END, delete_requested = fly.orphan_apps.delete_requested "
		"AND fly.orphan_apps.deleted_at IS NULL, fly_app_id = excluded.fly_app_id",
		{apps_json, org_slug});
	// Reported apps that are gone from Fly, or that a live row owns now, are orphans no more.
	spi.Query(
		"UPDATE fly.orphan_apps o SET deleted_at = pg_catalog.now() WHERE o.deleted_at IS NULL "
		"AND (NOT EXISTS (SELECT 1 FROM pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) AS n "
		"(name pg_catalog.text) WHERE n.name OPERATOR(pg_catalog.=) o.fly_app_name) OR EXISTS (SELECT 1 FROM "
		"fly.user_fly_apps a WHERE a.fly_app_name OPERATOR(pg_catalog.=) o.fly_app_name AND a.deleted_at IS NULL))",
		{apps_json});
	std::vector<std::string> to_delete;
	for (const auto &row : spi.Query("SELECT fly_app_name FROM fly.orphan_apps WHERE delete_requested "
	                                 "AND deleted_at IS NULL ORDER BY fly_app_name",
	                                 {}, true)) {
		to_delete.push_back(row[0].value_or(""));
	}
	return to_delete;
}

void
RecordOrphanDeleted(pg::SpiConnection &spi, const std::string &app_name, const std::string &error) {
	spi.Query("UPDATE fly.orphan_apps SET deleted_at = CASE WHEN $2 IS NULL THEN pg_catalog.now() END, "
	          "last_error = $2 WHERE fly_app_name OPERATOR(pg_catalog.=) $1",
	          {app_name, error.empty() ? std::nullopt : pg::Value(error)});
}

namespace {

bool
HaveOrphanMachines(pg::SpiConnection &spi) {
	return spi.Query("SELECT pg_catalog.to_regclass('fly.orphan_machines') IS NOT NULL", {}, true)
	           .at(0)
	           .at(0)
	           .value_or("f") == "t";
}

} // namespace

void
RecordOrphanMachines(pg::SpiConnection &spi, int64_t app_id, const std::string &user_id,
                     const std::vector<reconcile::OrphanMachine> &machines) {
	if (machines.empty() || !HaveOrphanMachines(spi)) {
		return;
	}
	for (const auto &machine : machines) {
		// found_at is now() for a machine not reported before (or gone and back): only then is there an event.
		auto rows =
			spi.Query("INSERT INTO fly.orphan_machines (fly_app_name, fly_machine_id, user_id_env, app_user_id) "
		              "VALUES ($1, $2, pg_catalog.left(NULLIF($3, ''), 200), $4::pg_catalog.uuid) "
		              "ON CONFLICT (fly_app_name, fly_machine_id) DO UPDATE SET last_seen_at = pg_catalog.now(), "
		              "user_id_env = excluded.user_id_env, app_user_id = excluded.app_user_id, deleted_at = NULL, "
		              "found_at = CASE WHEN fly.orphan_machines.deleted_at IS NULL THEN fly.orphan_machines.found_at "
		              "ELSE pg_catalog.now() END, delete_requested = fly.orphan_machines.delete_requested "
		              "AND fly.orphan_machines.deleted_at IS NULL "
		              "RETURNING found_at OPERATOR(pg_catalog.=) pg_catalog.now(), user_id_env",
		              {machine.app_name, machine.machine_id, machine.user_id_env, user_id});
		if (rows.empty() || rows[0][0].value_or("f") != "t") {
			continue;
		}
		Json details = Json::Object();
		details.Set("app_name", Json::String(machine.app_name));
		details.Set("machine_id", Json::String(machine.machine_id));
		details.Set("user_id_env", rows[0][1] ? Json::String(*rows[0][1]) : Json::Null());
		spi.Query("INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
		          "VALUES ($1::pg_catalog.int8, $2::pg_catalog.uuid, 'orphan_machine_found', (SELECT a.status FROM "
		          "fly.user_fly_apps a WHERE a.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8), $3::pg_catalog.jsonb)",
		          {app_id ? pg::Value(std::to_string(app_id)) : std::nullopt, user_id, details.Dump()});
	}
}

std::vector<std::pair<std::string, std::string>>
OrphanMachinesToDelete(pg::SpiConnection &spi) {
	std::vector<std::pair<std::string, std::string>> machines;
	if (!HaveOrphanMachines(spi)) {
		return machines;
	}
	// Checked again: a machine a live row records is the user's now, whatever was reported.
	for (const auto &row : spi.Query("SELECT o.fly_app_name, o.fly_machine_id FROM fly.orphan_machines o "
	                                 "WHERE o.delete_requested AND o.deleted_at IS NULL AND NOT EXISTS (SELECT 1 "
	                                 "FROM fly.user_fly_apps a WHERE a.deleted_at IS NULL AND a.fly_machine_id "
	                                 "OPERATOR(pg_catalog.=) o.fly_machine_id) ORDER BY 1, 2",
	                                 {}, true)) {
		machines.emplace_back(row[0].value_or(""), row[1].value_or(""));
	}
	return machines;
}

void
RecordOrphanMachineDeleted(pg::SpiConnection &spi, const std::string &app_name, const std::string &machine_id,
                           const std::string &error) {
	spi.Query("UPDATE fly.orphan_machines SET deleted_at = CASE WHEN $3 IS NULL THEN pg_catalog.now() END, "
	          "last_error = $3 WHERE fly_app_name OPERATOR(pg_catalog.=) $1 "
	          "AND fly_machine_id OPERATOR(pg_catalog.=) $2",
	          {app_name, machine_id, error.empty() ? std::nullopt : pg::Value(error)});
}

std::vector<OrphanMachineCheck>
LoadOrphanMachineChecks(pg::SpiConnection &spi) {
	std::vector<OrphanMachineCheck> apps;
	if (!HaveOrphanMachines(spi)) {
		return apps;
	}
	for (const auto &row : spi.Query("SELECT id, user_id, fly_app_name FROM fly.user_fly_apps WHERE deleted_at IS NULL "
	                                 "ORDER BY id",
	                                 {}, true)) {
		apps.push_back(OrphanMachineCheck{ToInt(row[0]), row[1].value_or(""), row[2].value_or("")});
	}
	return apps;
}

void
RecordOrphanMachinesGone(pg::SpiConnection &spi, const std::string &app_name,
                         const std::vector<std::string> &listed_ids) {
	Json ids = Json::Array();
	for (const auto &id : listed_ids) {
		ids.Append(Json::String(id));
	}
	spi.Query("UPDATE fly.orphan_machines o SET deleted_at = pg_catalog.now() WHERE o.deleted_at IS NULL "
	          "AND o.fly_app_name OPERATOR(pg_catalog.=) $1 AND NOT EXISTS (SELECT 1 FROM "
	          "pg_catalog.jsonb_array_elements_text($2::pg_catalog.jsonb) AS l (id) "
	          "WHERE l.id OPERATOR(pg_catalog.=) o.fly_machine_id)",
	          {app_name, ids.Dump()});
}

} // namespace pgfly
