#include "pgfly/pgfly_rollout_store.hpp"

#include <stdexcept>

#include "pgfly/core/json.hpp"
#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pgfly_app_store.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly {

using pg::Seconds;
using pg::ToInt;
using pg::UuidArray;

namespace {

// A database still at 0.1.0 (ALTER EXTENSION pg_fly UPDATE not yet run) has no rollout tables; the worker
// must keep serving it.
bool
RolloutTablesExist(pg::SpiConnection &spi) {
	auto rows = spi.Query("SELECT pg_catalog.to_regclass('fly.image_rollout_apps') IS NOT NULL", {}, true);
	return rows.at(0).at(0) == std::string("t");
}

void
InsertEvent(pg::SpiConnection &spi, const RolloutApp &app, const char *type, const Json &details) {
	spi.Query("INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
	          "SELECT a.id, a.user_id, $2, a.status, $3::pg_catalog.jsonb FROM fly.user_fly_apps a "
	          "WHERE a.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8",
	          {std::to_string(app.app_id), std::string(type), details.Dump()});
}

Json
NamesJson(const std::vector<std::string> &names) {
	Json array = Json::Array();
	for (const auto &name : names) {
		array.Append(Json::String(name));
	}
	return array;
}

std::vector<std::string>
NamesFromJson(const pg::Value &text) {
	std::vector<std::string> names;
	if (!text) {
		return names;
	}
	const Json array = ParseJson(*text).value;
	for (size_t i = 0; array.IsArray() && i < array.Size(); i++) {
		if (auto name = array.At(i).AsString()) {
			names.push_back(*name);
		}
	}
	return names;
}

// For a secrets rollout: each claimed app's image and the secret names last set on it.
void
LoadSecretsTargets(pg::SpiConnection &spi, std::vector<RolloutApp> &apps) {
	for (auto &app : apps) {
		auto rows = spi.Query("SELECT image, pg_catalog.array_to_json(secret_names)::pg_catalog.text "
		                      "FROM fly.user_fly_apps WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8",
		                      {std::to_string(app.app_id)}, true);
		app.secrets_rollout = true;
		if (!rows.empty()) {
			app.image = rows[0][0].value_or("");
			app.secret_names = NamesFromJson(rows[0][1]);
		}
	}
}

Json
EventDetails(int64_t rollout_id, const RolloutApp &app) {
	Json details = Json::Object();
	details.Set("rollout_id", Json::Integer(rollout_id));
	details.Set("machine_id", Json::String(app.machine_id));
	details.Set("canary", Json::Bool(app.canary));
	return details;
}

} // namespace

std::optional<RunningRollout>
LoadRunningRollout(pg::SpiConnection &spi) {
	if (!RolloutTablesExist(spi)) {
		return std::nullopt;
	}
	auto rows = spi.Query("SELECT id, image, status, max_failures, "
	                      "COALESCE(canary_deadline OPERATOR(pg_catalog.<=) pg_catalog.now(), false) "
	                      "FROM fly.image_rollouts "
	                      "WHERE status OPERATOR(pg_catalog.=) ANY (ARRAY['canary', 'canary_check', 'rolling']) "
	                      "FOR UPDATE SKIP LOCKED",
	                      {});
	RunningRollout rollout;
	if (rows.empty()) {
		// Skipped because another transaction holds it, or there is none.
		rows = spi.Query("SELECT id FROM fly.image_rollouts "
		                 "WHERE status OPERATOR(pg_catalog.=) ANY (ARRAY['canary', 'canary_check', 'rolling'])",
		                 {}, true);
		if (rows.empty()) {
			return std::nullopt;
		}
		rollout.id = ToInt(rows[0][0]);
		rollout.held_by_another = true;
		return rollout;
	}
	rollout.id = ToInt(rows[0][0]);
	rollout.image = rows[0][1].value_or("");
	rollout.phase = rollout::PhaseFromName(rows[0][2].value_or("")).value_or(rollout::Phase::kHalted);
	rollout.max_failures = static_cast<int>(ToInt(rows[0][3]));
	rollout.canary_deadline_passed = rows[0][4] == std::string("t");
	if (SecretsColumnsExist(spi)) {
		auto kind = spi.Query("SELECT kind FROM fly.image_rollouts WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8",
		                      {std::to_string(rollout.id)});
		rollout.kind = kind.at(0).at(0).value_or("image");
	}
	auto counts =
		spi.Query("SELECT pg_catalog.count(*) "
	              "FILTER (WHERE canary AND status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'updating'])), "
	              "pg_catalog.count(*) FILTER (WHERE canary AND status OPERATOR(pg_catalog.=) 'updated'), "
	              "pg_catalog.count(*) FILTER (WHERE canary AND status OPERATOR(pg_catalog.=) 'healthy'), "
	              "pg_catalog.count(*) "
	              "FILTER (WHERE NOT canary AND status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'updating'])), "
	              "pg_catalog.count(*) FILTER (WHERE status OPERATOR(pg_catalog.=) 'failed') "
	              "FROM fly.image_rollout_apps WHERE rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8",
	              {std::to_string(rollout.id)}, true);
	rollout.counts.canary_pending = static_cast<int>(ToInt(counts.at(0).at(0)));
	rollout.counts.canary_updated = static_cast<int>(ToInt(counts[0][1]));
	rollout.counts.canary_healthy = static_cast<int>(ToInt(counts[0][2]));
	rollout.counts.pending = static_cast<int>(ToInt(counts[0][3]));
	rollout.counts.failed = static_cast<int>(ToInt(counts[0][4]));
	return rollout;
}

void
AdvanceRollout(pg::SpiConnection &spi, const RunningRollout &rollout, const rollout::Decision &decision) {
	if (decision.phase == rollout.phase) {
		return;
	}
	const std::string phase = rollout::PhaseName(decision.phase);
	spi.Query("UPDATE fly.image_rollouts SET status = $2, updated_at = pg_catalog.now(), "
	          "halted_reason = CASE WHEN $3 OPERATOR(pg_catalog.=) '' THEN NULL ELSE $3 END, "
	          "canary_deadline = CASE WHEN $2 OPERATOR(pg_catalog.=) 'canary_check' "
	          "THEN pg_catalog.now() OPERATOR(pg_catalog.+) canary_wait ELSE canary_deadline END, "
	          "finished_at = CASE WHEN $2 OPERATOR(pg_catalog.=) ANY (ARRAY['completed', 'halted']) "
	          "THEN pg_catalog.now() END "
	          "WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8",
	          {std::to_string(rollout.id), phase, decision.reason});
	if (decision.phase == rollout::Phase::kHalted) {
		Json payload = Json::Object();
		const bool secrets = rollout.kind == "secrets";
		payload.Set("kind", Json::String(secrets ? "secrets_rollout_halted" : "image_rollout_halted"));
		payload.Set("rollout_id", Json::Integer(rollout.id));
		// The image and the reason are for roles granted fly.image_rollout_progress (LISTEN takes no privilege).
		if (settings::notify_payload == settings::kNotifyPayloadFull) {
			payload.Set("image", secrets ? Json::Null() : Json::String(rollout.image));
			payload.Set("reason", Json::String(decision.reason));
		}
		spi.Query("SELECT pg_catalog.pg_notify($1, $2)", {std::string(kAlertChannel), payload.Dump()});
	}
}

std::vector<RolloutApp>
ClaimRolloutApps(pg::SpiConnection &spi, const RunningRollout &rollout, int limit,
                 const std::vector<std::string> &running) {
	const bool canaries = rollout.phase == rollout::Phase::kCanary;
	// Apps deprovisioned (or failed) since the rollout began are not the rollout's to touch.
	spi.Query("UPDATE fly.image_rollout_apps r SET status = 'skipped', last_error = 'no longer active', "
	          "updated_at = pg_catalog.now() WHERE r.rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
	          "AND r.status OPERATOR(pg_catalog.=) 'pending' AND r.canary OPERATOR(pg_catalog.=) $2::pg_catalog.bool "
	          "AND NOT EXISTS (SELECT 1 FROM fly.user_fly_apps a WHERE a.id OPERATOR(pg_catalog.=) r.fly_app_id "
	          "AND a.deleted_at IS NULL AND a.status OPERATOR(pg_catalog.=) ANY (ARRAY['active', 'provisioning']) "
	          "AND a.fly_machine_id IS NOT NULL)",
	          {std::to_string(rollout.id), std::string(canaries ? "true" : "false")});
	auto rows = spi.Query(
		"WITH next AS (SELECT r.fly_app_id FROM fly.image_rollout_apps r "
		"JOIN fly.user_fly_apps a ON a.id OPERATOR(pg_catalog.=) r.fly_app_id "
		"WHERE r.rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 AND r.status OPERATOR(pg_catalog.=) 'pending' "
		"AND r.canary OPERATOR(pg_catalog.=) $2::pg_catalog.bool "
		"AND NOT (r.user_id OPERATOR(pg_catalog.=) ANY ($4::pg_catalog.uuid[])) "
		"ORDER BY r.position LIMIT $3::pg_catalog.int4) "
		"UPDATE fly.image_rollout_apps r SET status = 'updating', updated_at = pg_catalog.now() FROM next, "
		"fly.user_fly_apps a WHERE r.rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
		"AND r.fly_app_id OPERATOR(pg_catalog.=) next.fly_app_id AND a.id OPERATOR(pg_catalog.=) r.fly_app_id "
		"RETURNING a.id, a.user_id, a.fly_app_name, a.fly_machine_id, a.region, a.cpu_kind, a.cpus, a.memory_mb, "
		"a.secrets_version, r.canary, r.attempts",
		{std::to_string(rollout.id), std::string(canaries ? "true" : "false"), std::to_string(limit),
	     UuidArray(running)});
	std::vector<RolloutApp> apps;
	for (const auto &row : rows) {
		RolloutApp app;
		app.app_id = ToInt(row[0]);
		app.user_id = row[1].value_or("");
		app.app_name = row[2].value_or("");
		app.machine_id = row[3].value_or("");
		app.region = row[4].value_or("");
		app.guest = GuestFromColumns(row, 5);
		if (row[8]) {
			app.secrets_version = ToInt(row[8]);
		}
		app.canary = row[9] == std::string("t");
		app.attempts = static_cast<int>(ToInt(row[10]));
		apps.push_back(std::move(app));
	}
	if (rollout.kind == "secrets") {
		LoadSecretsTargets(spi, apps);
	}
	return apps;
}

void
ReleaseRolloutClaims(pg::SpiConnection &spi, int64_t rollout_id, const std::vector<std::string> &busy) {
	spi.Query(
		"UPDATE fly.image_rollout_apps SET status = 'pending' "
		"WHERE rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 AND status OPERATOR(pg_catalog.=) 'updating' "
		"AND NOT (user_id OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.uuid[]))",
		{std::to_string(rollout_id), UuidArray(busy)});
}

void
RecordRolloutAttemptFailed(pg::SpiConnection &spi, int64_t rollout_id, const RolloutApp &app,
                           const std::string &error) {
	spi.Query("UPDATE fly.image_rollout_apps SET attempts = attempts OPERATOR(pg_catalog.+) 1, last_error = $3, "
	          "updated_at = pg_catalog.now() WHERE rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
	          "AND fly_app_id OPERATOR(pg_catalog.=) $2::pg_catalog.int8",
	          {std::to_string(rollout_id), std::to_string(app.app_id), error});
	Json details = EventDetails(rollout_id, app);
	details.Set("error", Json::String(error));
	InsertEvent(spi, app, app.secrets_rollout ? "secrets_rollout_attempt_failed" : "image_update_attempt_failed",
	            details);
}

void
RecordRolloutResult(pg::SpiConnection &spi, int64_t rollout_id, const std::string &image, const RolloutApp &app,
                    const rollout::Step &step) {
	using rollout::Result;
	const char *status = "failed";
	const char *event = "image_update_failed";
	switch (step.result) {
	case Result::kUpdated:
		status = "updated";
		event = "image_updated";
		break;
	case Result::kAlreadyCurrent:
		status = "updated";
		event = "image_already_current";
		break;
	case Result::kVanished:
		status = "skipped";
		event = "image_update_skipped";
		break;
	case Result::kFailed:
	case Result::kContinue:
		break;
	}
	if (app.secrets_rollout) {
		switch (step.result) {
		case Result::kUpdated:
			event = "secrets_rollout_updated";
			break;
		case Result::kAlreadyCurrent:
			event = "secrets_rollout_already_current";
			break;
		case Result::kVanished:
			event = "secrets_rollout_skipped";
			break;
		default:
			event = "secrets_rollout_failed";
			break;
		}
	}
	const bool runs_image = step.result == Result::kUpdated || step.result == Result::kAlreadyCurrent;
	if (runs_image) {
		// An app row another transaction holds fails this at once instead of stalling the loop for lock_timeout:
		// the app stays 'updating' and the next rollout pass takes it again.
		spi.Query("SELECT 1 FROM fly.user_fly_apps WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
		          "FOR UPDATE NOWAIT",
		          {std::to_string(app.app_id)});
	}
	spi.Query(
		"UPDATE fly.image_rollout_apps SET status = $3, "
		"from_image = COALESCE(CASE WHEN $4 OPERATOR(pg_catalog.=) '' THEN NULL ELSE $4 END, from_image), "
		"last_error = CASE WHEN $5 OPERATOR(pg_catalog.=) '' THEN NULL ELSE $5 END, "
		"updated_at = pg_catalog.now() "
		"WHERE rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
		"AND fly_app_id OPERATOR(pg_catalog.=) $2::pg_catalog.int8",
		{std::to_string(rollout_id), std::to_string(app.app_id), std::string(status), step.from_image, step.error});
	if (runs_image && app.secrets_rollout) {
		// The machine now runs with the set: the app no longer differs from the file.
		spi.Query("UPDATE fly.user_fly_apps SET secrets_digest = $2, updated_at = pg_catalog.now() "
		          "WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 AND deleted_at IS NULL",
		          {std::to_string(app.app_id), app.secrets_digest});
	} else if (runs_image) {
		spi.Query("UPDATE fly.user_fly_apps SET image = $2, updated_at = pg_catalog.now() "
		          "WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 AND deleted_at IS NULL",
		          {std::to_string(app.app_id), image});
	}
	Json details = EventDetails(rollout_id, app);
	if (app.secrets_rollout) {
		// No digest: the rollout_id names the set, and the events are readable by dashboards.
		if (step.secrets_version) {
			details.Set("secrets_version", Json::Integer(*step.secrets_version));
		}
		if (!step.error.empty()) {
			details.Set("error", Json::String(step.error));
		}
		InsertEvent(spi, app, event, details);
		return;
	}
	details.Set("from_image", step.from_image.empty() ? Json::Null() : Json::String(step.from_image));
	details.Set("to_image", Json::String(image));
	if (!step.error.empty()) {
		details.Set("error", Json::String(step.error));
	}
	InsertEvent(spi, app, event, details);
}

bool
SecretsColumnsExist(pg::SpiConnection &spi) {
	auto rows = spi.Query("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute "
	                      "WHERE attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('fly.image_rollouts') "
	                      "AND attname OPERATOR(pg_catalog.=) 'kind' AND NOT attisdropped)",
	                      {}, true);
	return rows.at(0).at(0) == std::string("t");
}

std::string
LoadSecretsDigestKey(pg::SpiConnection &spi) {
	auto exists = spi.Query("SELECT pg_catalog.to_regclass('fly.secrets_digest_key') IS NOT NULL", {}, true);
	if (exists.at(0).at(0) != std::string("t")) {
		return std::string();
	}
	auto rows = spi.Query("SELECT key FROM fly.secrets_digest_key", {}, true);
	if (rows.empty() || !rows[0][0] || rows[0][0]->empty()) {
		throw std::runtime_error("fly.secrets_digest_key holds no key: insert one (see the README, Secrets that "
		                         "change)");
	}
	return *rows[0][0];
}

std::optional<int64_t>
StartSecretsRollout(pg::SpiConnection &spi, const std::string &digest, bool empty_set) {
	if (!SecretsColumnsExist(spi)) {
		return std::nullopt;
	}
	auto latest = spi.Query("SELECT secrets_digest, status FROM fly.image_rollouts "
	                        "WHERE kind OPERATOR(pg_catalog.=) 'secrets' ORDER BY id DESC LIMIT 1",
	                        {}, true);
	if (!latest.empty() && latest[0][0] == digest &&
	    (latest[0][1] == std::string("halted") || latest[0][1] == std::string("cancelled"))) {
		return std::nullopt; // the admin's to resume or to leave
	}
	// An app that never had secrets set (no digest, no names) needs nothing while the set is empty. An app the
	// rollouts for this set already took (since the file last held another set) is not taken again: one whose
	// machine was gone would otherwise be tried at every check.
	const char *differs =
		"a.deleted_at IS NULL AND a.status OPERATOR(pg_catalog.=) 'active' AND a.fly_machine_id IS NOT NULL "
		"AND (a.secrets_digest IS NULL OR a.secrets_digest OPERATOR(pg_catalog.<>) $1) "
		"AND NOT (a.secrets_digest IS NULL AND $2::pg_catalog.bool "
		"AND COALESCE(pg_catalog.cardinality(a.secret_names), 0) OPERATOR(pg_catalog.=) 0) "
		"AND NOT EXISTS (SELECT 1 FROM fly.image_rollout_apps ra JOIN fly.image_rollouts r "
		"ON r.id OPERATOR(pg_catalog.=) ra.rollout_id WHERE ra.fly_app_id OPERATOR(pg_catalog.=) a.id "
		"AND r.kind OPERATOR(pg_catalog.=) 'secrets' AND r.secrets_digest OPERATOR(pg_catalog.=) $1 "
		"AND r.id OPERATOR(pg_catalog.>) (SELECT COALESCE(pg_catalog.max(o.id), 0) FROM fly.image_rollouts o "
		"WHERE o.kind OPERATOR(pg_catalog.=) 'secrets' AND o.secrets_digest OPERATOR(pg_catalog.<>) $1))";
	const std::string count_sql = std::string("SELECT pg_catalog.count(*) FROM fly.user_fly_apps a WHERE ") + differs;
	auto count = spi.Query(count_sql.c_str(), {digest, std::string(empty_set ? "true" : "false")}, true);
	if (ToInt(count.at(0).at(0)) == 0) {
		return std::nullopt;
	}
	// An image rollout started meanwhile wins (one rollout runs at a time): this one waits for the next pass.
	auto rows = spi.Query("INSERT INTO fly.image_rollouts (kind, image, secrets_digest, canary_count, canary_wait, "
	                      "max_failures) VALUES ('secrets', NULL, $1, 1, '5 minutes', 0) ON CONFLICT DO NOTHING "
	                      "RETURNING id",
	                      {digest});
	if (rows.empty()) {
		return std::nullopt;
	}
	const int64_t id = ToInt(rows[0][0]);
	const std::string insert_sql =
		std::string("INSERT INTO fly.image_rollout_apps (rollout_id, fly_app_id, user_id, fly_app_name, canary, "
	                "position, from_image) SELECT $3::pg_catalog.int8, a.id, a.user_id, a.fly_app_name, "
	                "a.n OPERATOR(pg_catalog.<=) 1, a.n, a.image FROM (SELECT a.*, pg_catalog.row_number() "
	                "OVER (ORDER BY a.id) AS n FROM fly.user_fly_apps a WHERE ") +
		differs + ") a";
	spi.Query(insert_sql.c_str(), {digest, std::string(empty_set ? "true" : "false"), std::to_string(id)});
	return id;
}

void
RecordSecretsSet(pg::SpiConnection &spi, int64_t rollout_id, const RolloutApp &app, int64_t version,
                 const std::vector<std::string> &names, const std::vector<std::string> &unset) {
	spi.Query("UPDATE fly.user_fly_apps SET secrets_version = $2::pg_catalog.int8, "
	          "secret_names = ARRAY(SELECT pg_catalog.jsonb_array_elements_text($3::pg_catalog.jsonb)), "
	          "updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
	          "AND deleted_at IS NULL",
	          {std::to_string(app.app_id), std::to_string(version), NamesJson(names).Dump()});
	Json details = EventDetails(rollout_id, app);
	details.Set("names", NamesJson(names));
	details.Set("unset", NamesJson(unset));
	details.Set("version", Json::Integer(version));
	InsertEvent(spi, app, "secrets_set", details);
}

std::vector<HealthTarget>
LoadCanariesToCheck(pg::SpiConnection &spi, int64_t rollout_id, double every_seconds) {
	auto rows =
		spi.Query("SELECT a.id, a.user_id, a.fly_app_name, a.fly_machine_id, a.tier FROM fly.image_rollout_apps r "
	              "JOIN fly.user_fly_apps a ON a.id OPERATOR(pg_catalog.=) r.fly_app_id AND a.deleted_at IS NULL "
	              "AND a.fly_machine_id IS NOT NULL "
	              "WHERE r.rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 AND r.canary "
	              "AND r.status OPERATOR(pg_catalog.=) 'updated' AND (r.last_checked_at IS NULL OR r.last_checked_at "
	              "OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) "
	              "pg_catalog.make_interval(secs => $2::pg_catalog.float8))) ORDER BY r.position",
	              {std::to_string(rollout_id), Seconds(every_seconds)}, true);
	std::vector<HealthTarget> targets;
	for (const auto &row : rows) {
		targets.push_back(
			HealthTarget{ToInt(row[0]), row[1].value_or(""), row[2].value_or(""), row[3].value_or(""), row[4]});
	}
	return targets;
}

void
RecordCanaryHealth(pg::SpiConnection &spi, int64_t rollout_id, int64_t app_id, bool healthy) {
	spi.Query("UPDATE fly.image_rollout_apps SET last_checked_at = pg_catalog.now(), updated_at = pg_catalog.now(), "
	          "status = CASE WHEN $3::pg_catalog.bool THEN 'healthy' ELSE status END "
	          "WHERE rollout_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
	          "AND fly_app_id OPERATOR(pg_catalog.=) $2::pg_catalog.int8 AND status OPERATOR(pg_catalog.=) 'updated'",
	          {std::to_string(rollout_id), std::to_string(app_id), std::string(healthy ? "true" : "false")});
}

} // namespace pgfly
