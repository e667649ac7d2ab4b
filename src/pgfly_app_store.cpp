#include "pgfly/pgfly_app_store.hpp"

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"
#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pgfly_guc.hpp"
#include "pgfly/pgfly_health_store.hpp"
#include "pgfly/pgfly_queue_store.hpp"
#include "pgfly/pgfly_rollout_store.hpp"

namespace pgfly {

using pg::Number;
using pg::Seconds;
using pg::ToInt;

namespace {

pg::Value
Optional(const std::optional<std::string> &value) {
	return value;
}

std::string
Bool(bool value) {
	return value ? "true" : "false";
}

// Secrets a provision just set. A name set before and no longer in the set stays recorded, and the digest is
// cleared, so that a secrets rollout unsets it later (a provision sets only the file's names).
void
WriteSecretsRecord(pg::SpiConnection &spi, const StepContext &context, const reconcile::AppChange &change) {
	if (!change.secrets_digest || context.app_id == 0 || !SecretsColumnsExist(spi)) {
		return;
	}
	Json names = Json::Array();
	for (const auto &name : change.secret_names) {
		names.Append(Json::String(name));
	}
	spi.Query("WITH n AS (SELECT ARRAY(SELECT pg_catalog.jsonb_array_elements_text($3::pg_catalog.jsonb)) AS names) "
	          "UPDATE fly.user_fly_apps a SET "
	          "secrets_digest = CASE WHEN COALESCE(a.secret_names, '{}') OPERATOR(pg_catalog.<@) n.names "
	          "THEN $2 END, "
	          "secret_names = CASE WHEN COALESCE(a.secret_names, '{}') OPERATOR(pg_catalog.<@) n.names THEN n.names "
	          "ELSE a.secret_names OPERATOR(pg_catalog.||) n.names END "
	          "FROM n WHERE a.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8",
	          {std::to_string(context.app_id), *change.secrets_digest, names.Dump()});
}

// Inserts or updates the live app row; returns its status afterwards.
pg::Value
WriteApp(pg::SpiConnection &spi, StepContext &context, const reconcile::AppChange &change) {
	const pg::Value cpu_kind = change.guest ? pg::Value(change.guest->cpu_kind) : std::nullopt;
	const pg::Value cpus = change.guest ? Number(change.guest->cpus) : std::nullopt;
	const pg::Value memory = change.guest ? Number(change.guest->memory_mb) : std::nullopt;
	if (change.insert) {
		auto rows = spi.Query(
			"INSERT INTO fly.user_fly_apps (user_id, tier, fly_app_name, name_attempt, fly_org_slug, status, region, "
			"cpu_kind, cpus, memory_mb, image, fly_app_created_at) VALUES ($1::pg_catalog.uuid, $2, $3, "
			"$4::pg_catalog.int4, $5, $6, COALESCE($7, ''), $8, $9::pg_catalog.int4, $10::pg_catalog.int4, $11, "
			"CASE WHEN $12::pg_catalog.bool THEN pg_catalog.now() END) RETURNING id, status",
			{context.user_id, Optional(change.tier), Optional(change.name), Number(change.name_attempt.value_or(0)),
		     context.org_slug, change.status.value_or("provisioning"), Optional(change.region), cpu_kind, cpus, memory,
		     Optional(change.image), Bool(change.app_created || change.app_create_sent)});
		context.app_id = ToInt(rows.at(0).at(0));
		return rows.at(0).at(1);
	}
	if (context.app_id == 0) {
		return std::nullopt;
	}
	auto rows = spi.Query(
		"UPDATE fly.user_fly_apps SET status = COALESCE($2, status), fly_app_name = COALESCE($3, fly_app_name), "
		"name_attempt = COALESCE($4::pg_catalog.int4, name_attempt), fly_app_id = COALESCE($5, fly_app_id), "
		"fly_machine_id = CASE WHEN $6 IS NULL THEN fly_machine_id "
		"WHEN $6 OPERATOR(pg_catalog.=) '' THEN NULL ELSE $6 END, "
		"region = COALESCE($7, region), cpu_kind = COALESCE($8, cpu_kind), "
		"cpus = COALESCE($9::pg_catalog.int4, cpus), memory_mb = COALESCE($10::pg_catalog.int4, memory_mb), "
		"image = COALESCE($11, image), tier = COALESCE($12, tier), "
		"secrets_version = COALESCE($13::pg_catalog.int8, secrets_version), "
		"provisioned_at = CASE WHEN $14::pg_catalog.bool THEN pg_catalog.now() ELSE provisioned_at END, "
		"last_error = CASE WHEN $14::pg_catalog.bool THEN NULL ELSE last_error END, "
		"attempts = CASE WHEN $14::pg_catalog.bool THEN 0 ELSE attempts END, "
		"deleted_at = CASE WHEN $15::pg_catalog.bool THEN pg_catalog.now() ELSE deleted_at END, "
		"pending_machine_operation = CASE WHEN $16 IS NULL THEN pending_machine_operation "
		"WHEN $16 OPERATOR(pg_catalog.=) '' THEN NULL ELSE $16 END, "
		"pending_machine_since = CASE WHEN $16 IS NULL THEN pending_machine_since "
		"WHEN $16 OPERATOR(pg_catalog.=) '' THEN NULL ELSE pg_catalog.now() END, "
		"fly_app_created_at = CASE WHEN $20::pg_catalog.bool THEN NULL "
		"WHEN $17::pg_catalog.bool THEN pg_catalog.now() "
		"WHEN $18::pg_catalog.bool THEN COALESCE(fly_app_created_at, pg_catalog.now()) ELSE fly_app_created_at END, "
		"fly_machine_created_at = CASE WHEN $19::pg_catalog.bool IS NULL THEN fly_machine_created_at "
		"WHEN $19::pg_catalog.bool THEN pg_catalog.now() END, "
		"updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 RETURNING status",
		{std::to_string(context.app_id),
	     Optional(change.status),
	     Optional(change.name),
	     Number(change.name_attempt),
	     Optional(change.fly_app_id),
	     Optional(change.machine_id),
	     Optional(change.region),
	     cpu_kind,
	     cpus,
	     memory,
	     Optional(change.image),
	     Optional(change.tier),
	     Number(change.secrets_version),
	     std::string(change.provisioned ? "true" : "false"),
	     std::string(change.deleted ? "true" : "false"),
	     Optional(change.pending_create),
	     Bool(change.app_created),
	     Bool(change.app_create_sent),
	     change.machine_created ? pg::Value(Bool(*change.machine_created)) : std::nullopt,
	     Bool(change.app_delete_sent)});
	WriteSecretsRecord(spi, context, change);
	if (change.delete_requested) {
		// Its own statement. A DELETE is recorded only when it will leave: not when a newer generation superseded
		// the operation (its request is dropped, and the next operation must not take a live app for a dying
		// one). The queue item is locked already.
		spi.Query("UPDATE fly.user_fly_apps SET delete_requested_at = CASE WHEN $2::pg_catalog.bool "
		          "THEN pg_catalog.now() END WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
		          "AND (NOT $2::pg_catalog.bool OR EXISTS (SELECT 1 FROM fly.reconcile_queue q "
		          "WHERE q.user_id OPERATOR(pg_catalog.=) $3::pg_catalog.uuid "
		          "AND q.generation OPERATOR(pg_catalog.=) $4::pg_catalog.int8))",
		          {std::to_string(context.app_id), std::string(*change.delete_requested ? "true" : "false"),
		           context.user_id, std::to_string(context.generation)});
	}
	return rows.empty() ? std::nullopt : rows[0][0];
}

pg::Value
RecordFailure(pg::SpiConnection &spi, const StepContext &context, const reconcile::Step &step) {
	if (context.app_id == 0) {
		return std::nullopt;
	}
	const bool failed = step.completion == reconcile::Completion::kFailed;
	auto rows = spi.Query("UPDATE fly.user_fly_apps SET last_error = $2, attempts = $3::pg_catalog.int4, "
	                      "status = CASE WHEN $4::pg_catalog.bool THEN 'failed' ELSE status END, "
	                      "updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
	                      "RETURNING status",
	                      {std::to_string(context.app_id), step.error, std::to_string(context.attempts),
	                       std::string(failed ? "true" : "false")});
	return rows.empty() ? std::nullopt : rows[0][0];
}

// An alert_raised event holding the alert's JSON, and a NOTIFY sent when this transaction commits. LISTEN takes
// no privilege, so unless fly.notify_payload = full the notification names no user, app or error: a role
// granted fly.recent_events reads them from the event the notification's event_id names.
void
RaiseAlert(pg::SpiConnection &spi, StepContext &context, const reconcile::Step &step, const pg::Value &status) {
	const bool failed = step.completion == reconcile::Completion::kFailed;
	const std::string kind = failed ? "failed" : "repeated_failures";
	auto rows = spi.Query(
		"SELECT pg_catalog.json_build_object('kind', $3, 'user_id', $1, 'fly_app_name', "
		"(SELECT a.fly_app_name FROM fly.user_fly_apps a WHERE a.id OPERATOR(pg_catalog.=) $2::pg_catalog.int8), "
		"'status', $4, 'attempts', $5::pg_catalog.int4, 'error', $6, 'at', pg_catalog.now())::pg_catalog.text",
		{context.user_id, std::to_string(context.app_id), kind, status, std::to_string(context.attempts), step.error},
		true);
	const pg::Value details = rows.at(0).at(0);
	auto event = spi.Query("INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
	                       "VALUES ((CASE WHEN $1 OPERATOR(pg_catalog.=) '0' THEN NULL ELSE $1 END)::pg_catalog.int8, "
	                       "$2::pg_catalog.uuid, 'alert_raised', $3, "
	                       "$4::pg_catalog.jsonb) RETURNING id",
	                       {std::to_string(context.app_id), context.user_id, status, details});
	const std::string event_id = event.at(0).at(0).value_or("0");
	std::string payload;
	if (settings::notify_payload == settings::kNotifyPayloadFull) {
		auto full = spi.Query("SELECT ($1::pg_catalog.jsonb OPERATOR(pg_catalog.||) "
		                      "pg_catalog.jsonb_build_object('event_id', $2::pg_catalog.int8))::pg_catalog.text",
		                      {details, event_id}, true);
		payload = full.at(0).at(0).value_or("{}");
	} else {
		Json minimal = Json::Object();
		minimal.Set("kind", Json::String(kind));
		minimal.Set("event_id", Json::Integer(ToInt(pg::Value(event_id))));
		minimal.Set("status", status ? Json::String(*status) : Json::Null());
		minimal.Set("attempts", Json::Integer(context.attempts));
		payload = minimal.Dump();
	}
	spi.Query("SELECT pg_catalog.pg_notify($1, $2)", {std::string(kAlertChannel), payload});
	spi.Query("UPDATE fly.reconcile_queue SET alerted = true WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid",
	          {context.user_id});
	context.alerted = true;
	context.raise_alert = false; // once: not again with the operation's next step (its success, say)
}

} // namespace

void
RaiseSubscriptionAlert(pg::SpiConnection &spi, const std::string &kind, const pg::Value &user_id,
                       const pg::Value &user_for_message, const pg::Value &tier, const pg::Value &wait_id) {
	auto rows = spi.Query("SELECT pg_catalog.json_build_object('kind', $1, 'user_id', $2, 'tier', $3, "
	                      "'at', pg_catalog.now())::pg_catalog.text",
	                      {kind, user_for_message, tier}, true);
	const pg::Value details = rows.at(0).at(0);
	pg::Value event_id;
	if (user_id) {
		// The event goes with the user's live app, if there is one, and shows its status.
		auto event =
			spi.Query("INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
		              "SELECT a.id, $1::pg_catalog.uuid, 'alert_raised', a.status, $2::pg_catalog.jsonb "
		              "FROM (SELECT NULL) AS one LEFT JOIN fly.user_fly_apps a "
		              "ON a.user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid AND a.deleted_at IS NULL RETURNING id",
		              {*user_id, details});
		event_id = event.at(0).at(0);
	}
	// Unless the payload is full, the notification names no user and no tier: the ids lead to them.
	Json payload = Json::Object();
	if (settings::notify_payload == settings::kNotifyPayloadFull) {
		payload = ParseJson(details.value_or("{}")).value;
	} else {
		payload.Set("kind", Json::String(kind));
	}
	if (event_id) {
		payload.Set("event_id", Json::Integer(ToInt(event_id)));
	}
	if (wait_id) {
		payload.Set("wait_id", Json::Integer(ToInt(wait_id)));
	}
	spi.Query("SELECT pg_catalog.pg_notify($1, $2)", {std::string(kAlertChannel), payload.Dump()});
}

int
FirstFreeNameAttempt(pg::SpiConnection &spi, const std::string &user_id, const std::string &prefix) {
	for (int attempt = 0;; attempt++) {
		auto name = AppNameCandidate(prefix, user_id, attempt);
		if (!name) {
			return attempt; // exhausted: the operation reports it
		}
		auto rows = spi.Query("SELECT 1 FROM fly.user_fly_apps WHERE deleted_at IS NULL "
		                      "AND fly_app_name OPERATOR(pg_catalog.=) $1 "
		                      "AND user_id OPERATOR(pg_catalog.<>) $2::pg_catalog.uuid",
		                      {*name, user_id}, true);
		if (rows.empty()) {
			return attempt;
		}
	}
}

fly::Guest
GuestFromColumns(const pg::Row &row, size_t cpu_kind_column, const char *default_cpu_kind) {
	fly::Guest guest;
	guest.cpu_kind = row.at(cpu_kind_column).value_or(default_cpu_kind);
	guest.cpus = static_cast<int>(ToInt(row.at(cpu_kind_column + 1)));
	guest.memory_mb = static_cast<int>(ToInt(row.at(cpu_kind_column + 2)));
	return guest;
}

std::optional<TierPolicyRow>
LoadTierPolicy(pg::SpiConnection &spi, const std::string &tier) {
	// fallback_regions read through the row's JSON: an older schema (before ALTER EXTENSION pg_fly UPDATE) has no
	// such column and gives NULL.
	auto rows = spi.Query("SELECT dedicated_app, cpu_kind, cpus, memory_mb, "
	                      "COALESCE(region, pg_catalog.current_setting('fly.default_region')), "
	                      "pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.->) 'fallback_regions' "
	                      "FROM fly.tier_policies p WHERE tier OPERATOR(pg_catalog.=) $1",
	                      {tier}, true);
	if (rows.empty()) {
		return std::nullopt;
	}
	TierPolicyRow policy;
	policy.dedicated = rows[0][0] == std::string("t");
	policy.guest = GuestFromColumns(rows[0], 1, "shared");
	policy.region = rows[0][4].value_or("");
	if (rows[0][5]) {
		const Json regions = ParseJson(*rows[0][5]).value;
		for (size_t i = 0; i < regions.Size(); i++) {
			const std::string region = regions.At(i).AsString().value_or("");
			bool seen = region.empty() || region == policy.region;
			for (const auto &other : policy.fallback_regions) {
				seen = seen || other == region;
			}
			if (!seen) {
				policy.fallback_regions.push_back(region);
			}
		}
	}
	return policy;
}

std::optional<reconcile::AppRecord>
LoadLiveApp(pg::SpiConnection &spi, const std::string &user_id) {
	auto rows =
		spi.Query("SELECT id, fly_app_name, name_attempt, status, fly_machine_id, region, cpu_kind, cpus, "
	              "memory_mb, CASE WHEN provisioned_at IS NOT NULL THEN image END, pending_machine_operation, "
	              "EXTRACT(EPOCH FROM pg_catalog.now() OPERATOR(pg_catalog.-) pending_machine_since), "
	              "EXTRACT(EPOCH FROM pg_catalog.now() OPERATOR(pg_catalog.-) "
	              "CASE WHEN fly_app_created_at OPERATOR(pg_catalog.>) pg_catalog.now() THEN pg_catalog.now() "
	              "ELSE fly_app_created_at END), "
	              "EXTRACT(EPOCH FROM pg_catalog.now() OPERATOR(pg_catalog.-) "
	              "CASE WHEN fly_machine_created_at OPERATOR(pg_catalog.>) pg_catalog.now() THEN pg_catalog.now() "
	              "ELSE fly_machine_created_at END), "
	              "delete_requested_at IS NOT NULL "
	              "FROM fly.user_fly_apps "
	              "WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid AND deleted_at IS NULL",
	              {user_id}, true);
	if (rows.empty()) {
		return std::nullopt;
	}
	const auto &row = rows[0];
	reconcile::AppRecord app;
	app.id = ToInt(row[0]);
	app.name = row[1].value_or("");
	app.name_attempt = static_cast<int>(ToInt(row[2]));
	app.status = row[3].value_or("");
	app.machine_id = row[4].value_or("");
	app.region = row[5].value_or("");
	app.guest = GuestFromColumns(row, 6);
	app.image = row[9].value_or("");
	app.pending_create_operation = row[10].value_or("");
	app.pending_create_age_seconds = row[11] ? std::stod(*row[11]) : 0;
	if (row[12]) {
		app.app_created_age_seconds = std::stod(*row[12]);
	}
	if (row[13]) {
		app.machine_created_age_seconds = std::stod(*row[13]);
	}
	app.delete_requested = row[14].value_or("") == "t";
	return app;
}

bool
RecordStep(pg::SpiConnection &spi, StepContext &context, const reconcile::Step &step) {
	using reconcile::Completion;
	// A transaction holding the item (a tier change not yet committed, say) or the app row (an operator's) must
	// not stall the worker's loop for lock_timeout: the step fails at once, before writing anything, and the
	// operation is deferred.
	spi.Query("SELECT 1 FROM fly.reconcile_queue WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
	          "FOR UPDATE NOWAIT",
	          {context.user_id});
	if (context.app_id != 0) {
		spi.Query(
			"SELECT 1 FROM fly.user_fly_apps WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 FOR UPDATE NOWAIT",
			{std::to_string(context.app_id)});
	}
	pg::Value status;
	if (step.app) {
		status = WriteApp(spi, context, *step.app);
	}
	if (step.completion == Completion::kRetry || step.completion == Completion::kFailed || step.failed_attempt) {
		status = RecordFailure(spi, context, step);
	}
	for (const auto &event : step.events) {
		spi.Query("INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
		          "VALUES ($1::pg_catalog.int8, $2::pg_catalog.uuid, $3, COALESCE($4, (SELECT a.status FROM "
		          "fly.user_fly_apps a WHERE a.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8)), $5::pg_catalog.jsonb)",
		          {context.app_id ? pg::Value(std::to_string(context.app_id)) : std::nullopt, context.user_id,
		           event.type, status, event.details_json});
	}

	RecordOrphanMachines(spi, context.app_id, context.user_id, step.orphan_machines);

	if (context.raise_alert) {
		RaiseAlert(spi, context, step, status);
	}

	const std::vector<pg::Value> item = {context.user_id, std::to_string(context.generation)};
	bool still_ours = false;
	switch (step.completion) {
	case Completion::kContinue:
		// A failed attempt retried in place begins another attempt; the lease covers its backoff delay too.
		still_ours =
			!spi.Query("UPDATE fly.reconcile_queue SET lease_until = pg_catalog.now() OPERATOR(pg_catalog.+) "
		               "pg_catalog.make_interval(secs => $3::pg_catalog.float8), updated_at = pg_catalog.now(), "
		               "attempts = attempts OPERATOR(pg_catalog.+) CASE WHEN $6::pg_catalog.bool THEN 1 ELSE 0 END, "
		               "last_error = CASE WHEN $4::pg_catalog.bool THEN $5 ELSE last_error END "
		               "WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
		               "AND generation OPERATOR(pg_catalog.=) $2::pg_catalog.int8 RETURNING 1",
		               {context.user_id, std::to_string(context.generation),
		                Seconds(kLeaseSeconds + context.retry_delay_seconds),
		                std::string(step.failed_attempt ? "true" : "false"), step.error,
		                std::string(step.failed_attempt && !step.no_capacity ? "true" : "false")})
				 .empty();
		break;
	case Completion::kDone:
	case Completion::kFailed:
		still_ours =
			!spi.Query("DELETE FROM fly.reconcile_queue WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
		               "AND generation OPERATOR(pg_catalog.=) $2::pg_catalog.int8 RETURNING 1",
		               item)
				 .empty();
		break;
	case Completion::kRetry:
		still_ours =
			!spi.Query(
					"UPDATE fly.reconcile_queue SET run_after = pg_catalog.now() OPERATOR(pg_catalog.+) "
					"pg_catalog.make_interval(secs => $3::pg_catalog.float8), claimed_at = NULL, lease_until = NULL, "
					"last_error = $4, updated_at = pg_catalog.now(), "
					// No room in any region: the claim's attempt is given back (capacity spends none).
					"attempts = CASE WHEN $5::pg_catalog.bool THEN GREATEST(attempts OPERATOR(pg_catalog.-) 1, 0) "
					"ELSE attempts END "
					"WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
					"AND generation OPERATOR(pg_catalog.=) $2::pg_catalog.int8 RETURNING 1",
					{context.user_id, std::to_string(context.generation), Seconds(context.retry_delay_seconds),
		             step.error, std::string(step.no_capacity ? "true" : "false")})
				 .empty();
		break;
	}
	if (!still_ours) {
		// A newer tier change arrived meanwhile: let it be claimed afresh.
		ReleaseClaim(spi, context.user_id);
		return false;
	}
	return step.completion == Completion::kContinue;
}

} // namespace pgfly
