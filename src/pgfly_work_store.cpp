#include "pgfly/pgfly_work_store.hpp"

#include <algorithm>
#include <cstdio>

#include "pgfly/core/app_naming.hpp"
#include "pgfly/core/json.hpp"
#include "pgfly/pg/sql_values.hpp"
#include "pgfly/pgfly_guc.hpp"

namespace pgfly {

using pg::Number;
using pg::Seconds;
using pg::ToInt;
using pg::UuidArray;

namespace {

pg::Value
Optional(const std::optional<std::string> &value) {
	return value;
}

void
ReleaseClaim(pg::SpiConnection &spi, const std::string &user_id) {
	spi.Query("UPDATE fly.reconcile_queue SET claimed_at = NULL, lease_until = NULL "
	          "WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid",
	          {user_id});
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
		    "cpu_kind, cpus, memory_mb, image) VALUES ($1::pg_catalog.uuid, $2, $3, $4::pg_catalog.int4, $5, $6, "
		    "COALESCE($7, ''), $8, $9::pg_catalog.int4, $10::pg_catalog.int4, $11) RETURNING id, status",
		    {context.user_id, Optional(change.tier), Optional(change.name), Number(change.name_attempt.value_or(0)),
		     context.org_slug, change.status.value_or("provisioning"), Optional(change.region), cpu_kind, cpus, memory,
		     Optional(change.image)});
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
	    "updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 RETURNING status",
	    {std::to_string(context.app_id), Optional(change.status), Optional(change.name), Number(change.name_attempt),
	     Optional(change.fly_app_id), Optional(change.machine_id), Optional(change.region), cpu_kind, cpus, memory,
	     Optional(change.image), Optional(change.tier), Number(change.secrets_version),
	     std::string(change.provisioned ? "true" : "false"), std::string(change.deleted ? "true" : "false"),
	     Optional(change.pending_create)});
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

bool
ReleaseOrphanClaims(pg::SpiConnection &spi, const std::vector<std::string> &running) {
	spi.Query("UPDATE fly.reconcile_queue SET claimed_at = NULL, lease_until = NULL "
	          "WHERE user_id IN (SELECT user_id FROM fly.reconcile_queue WHERE claimed_at IS NOT NULL "
	          "AND NOT (user_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.uuid[])) FOR UPDATE SKIP LOCKED)",
	          {UuidArray(running)});
	// Rows another transaction holds were skipped; they are released on a later pass.
	return spi.Query("SELECT NOT EXISTS (SELECT 1 FROM fly.reconcile_queue WHERE claimed_at IS NOT NULL "
	                 "AND NOT (user_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.uuid[])))",
	                 {UuidArray(running)})
	           .at(0)
	           .at(0) == std::string("t");
}

void
RenewLeases(pg::SpiConnection &spi, const std::vector<std::string> &users) {
	// A row another transaction holds keeps its lease until the next renewal, minutes before it runs out.
	spi.Query("UPDATE fly.reconcile_queue SET lease_until = pg_catalog.now() OPERATOR(pg_catalog.+) "
	          "pg_catalog.make_interval(secs => $2::pg_catalog.float8) "
	          "WHERE user_id IN (SELECT user_id FROM fly.reconcile_queue "
	          "WHERE user_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.uuid[]) AND claimed_at IS NOT NULL "
	          "FOR UPDATE SKIP LOCKED)",
	          {UuidArray(users), std::to_string(kLeaseSeconds)});
}

std::vector<ClaimedItem>
ClaimDueItems(pg::SpiConnection &spi, int limit, const std::vector<std::string> &running) {
	auto rows = spi.Query(
	    "WITH due AS (SELECT user_id FROM fly.reconcile_queue "
	    "WHERE run_after OPERATOR(pg_catalog.<=) pg_catalog.now() "
	    "AND (claimed_at IS NULL OR lease_until OPERATOR(pg_catalog.<) pg_catalog.now()) "
	    "AND NOT (user_id OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.uuid[])) "
	    "ORDER BY run_after, user_id LIMIT $1::pg_catalog.int4 FOR UPDATE SKIP LOCKED) "
	    "UPDATE fly.reconcile_queue q SET claimed_at = pg_catalog.now(), "
	    "lease_until = pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2::pg_catalog.float8), "
	    "attempts = q.attempts OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.now() "
	    "FROM due WHERE q.user_id OPERATOR(pg_catalog.=) due.user_id "
	    "RETURNING q.user_id, q.desired, q.tier, q.generation, q.attempts, q.alerted",
	    {std::to_string(limit), std::to_string(kLeaseSeconds), UuidArray(running)});
	std::vector<ClaimedItem> items;
	for (const auto &row : rows) {
		ClaimedItem item;
		item.user_id = row[0].value_or("");
		item.present = row[1] == std::string("present");
		item.tier = row[2];
		item.generation = ToInt(row[3]);
		item.attempts = static_cast<int>(ToInt(row[4]));
		item.alerted = row[5] == std::string("t");
		items.push_back(std::move(item));
	}
	return items;
}

QueueSummary
SummarizeQueue(pg::SpiConnection &spi) {
	// One scan for both: this runs at every pass of the worker's loop. Not read-only: the claims this
	// transaction just made must be seen as claims, not as items still due.
	auto rows = spi.Query("SELECT pg_catalog.count(*) FILTER (WHERE run_after OPERATOR(pg_catalog.<=) pg_catalog.now()), "
	                      "EXTRACT(EPOCH FROM pg_catalog.min(CASE WHEN claimed_at IS NULL THEN run_after "
	                      "ELSE lease_until END) OPERATOR(pg_catalog.-) pg_catalog.now()) FROM fly.reconcile_queue",
	                      {});
	QueueSummary summary;
	summary.due = ToInt(rows.at(0).at(0));
	// NULL when the queue is empty (min over no rows): the worker then sleeps until woken.
	if (rows[0][1]) {
		summary.seconds_until_next_due = std::max(0.0, std::stod(*rows[0][1]));
	}
	return summary;
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

std::optional<TierPolicyRow>
LoadTierPolicy(pg::SpiConnection &spi, const std::string &tier) {
	auto rows = spi.Query("SELECT dedicated_app, cpu_kind, cpus, memory_mb, "
	                      "COALESCE(region, pg_catalog.current_setting('fly.default_region')) "
	                      "FROM fly.tier_policies WHERE tier OPERATOR(pg_catalog.=) $1",
	                      {tier}, true);
	if (rows.empty()) {
		return std::nullopt;
	}
	TierPolicyRow policy;
	policy.dedicated = rows[0][0] == std::string("t");
	policy.guest.cpu_kind = rows[0][1].value_or("shared");
	policy.guest.cpus = static_cast<int>(ToInt(rows[0][2]));
	policy.guest.memory_mb = static_cast<int>(ToInt(rows[0][3]));
	policy.region = rows[0][4].value_or("");
	return policy;
}

std::optional<reconcile::AppRecord>
LoadLiveApp(pg::SpiConnection &spi, const std::string &user_id) {
	auto rows = spi.Query("SELECT id, fly_app_name, name_attempt, status, fly_machine_id, region, cpu_kind, cpus, "
	                      "memory_mb, CASE WHEN provisioned_at IS NOT NULL THEN image END, pending_machine_operation, "
	                      "EXTRACT(EPOCH FROM pg_catalog.now() OPERATOR(pg_catalog.-) pending_machine_since) "
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
	app.guest.cpu_kind = row[6].value_or("");
	app.guest.cpus = static_cast<int>(ToInt(row[7]));
	app.guest.memory_mb = static_cast<int>(ToInt(row[8]));
	app.image = row[9].value_or("");
	app.pending_create_operation = row[10].value_or("");
	app.pending_create_age_seconds = row[11] ? std::stod(*row[11]) : 0;
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
		               "attempts = attempts OPERATOR(pg_catalog.+) CASE WHEN $4::pg_catalog.bool THEN 1 ELSE 0 END, "
		               "last_error = CASE WHEN $4::pg_catalog.bool THEN $5 ELSE last_error END "
		               "WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
		               "AND generation OPERATOR(pg_catalog.=) $2::pg_catalog.int8 RETURNING 1",
		               {context.user_id, std::to_string(context.generation),
		                Seconds(kLeaseSeconds + context.retry_delay_seconds),
		                std::string(step.failed_attempt ? "true" : "false"), step.error})
		         .empty();
		break;
	case Completion::kDone:
	case Completion::kFailed:
		still_ours = !spi.Query("DELETE FROM fly.reconcile_queue WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
		                        "AND generation OPERATOR(pg_catalog.=) $2::pg_catalog.int8 RETURNING 1",
		                        item)
		                  .empty();
		break;
	case Completion::kRetry:
		still_ours =
		    !spi.Query("UPDATE fly.reconcile_queue SET run_after = pg_catalog.now() OPERATOR(pg_catalog.+) "
		               "pg_catalog.make_interval(secs => $3::pg_catalog.float8), claimed_at = NULL, lease_until = NULL, "
		               "last_error = $4, updated_at = pg_catalog.now() "
		               "WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
		               "AND generation OPERATOR(pg_catalog.=) $2::pg_catalog.int8 RETURNING 1",
		               {context.user_id, std::to_string(context.generation), Seconds(context.retry_delay_seconds),
		                step.error})
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

std::vector<HealthTarget>
LoadHealthTargets(pg::SpiConnection &spi) {
	auto rows = spi.Query("SELECT id, user_id, fly_app_name, fly_machine_id, tier FROM fly.user_fly_apps "
	                      "WHERE deleted_at IS NULL AND status OPERATOR(pg_catalog.=) 'active' "
	                      "AND fly_machine_id IS NOT NULL ORDER BY last_health_check_at NULLS FIRST, id",
	                      {}, true);
	std::vector<HealthTarget> targets;
	targets.reserve(rows.size());
	for (const auto &row : rows) {
		targets.push_back(HealthTarget{ToInt(row[0]), row[1].value_or(""), row[2].value_or(""), row[3].value_or(""),
		                               row[4]});
	}
	return targets;
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
		spi.Query("INSERT INTO fly.user_fly_app_events (fly_app_id, user_id, event_type, status, details) "
		          "VALUES ($1::pg_catalog.int8, $2::pg_catalog.uuid, $3, $4, "
		          "$5::pg_catalog.jsonb OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('from', $6::pg_catalog.text, "
		          "'to', $7::pg_catalog.text))",
		          {std::to_string(target.app_id), target.user_id, type, rows[0][2], details_json, rows[0][0],
		           rows[0][1]});
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

bool
DeferItem(pg::SpiConnection &spi, const std::string &user_id, int64_t generation, double delay_seconds,
		  const std::string &error, bool return_attempt) {
	// A newer tier change (another generation) is not delayed by an older operation's trouble. A row another
	// transaction holds is skipped: the worker releases its claim on a later pass.
	return !spi.Query(
				   "UPDATE fly.reconcile_queue SET claimed_at = NULL, lease_until = NULL, "
				   "last_error = CASE WHEN generation OPERATOR(pg_catalog.=) $4::pg_catalog.int8 THEN $3 ELSE "
				   "last_error END, "
				   "run_after = CASE WHEN generation OPERATOR(pg_catalog.=) $4::pg_catalog.int8 THEN pg_catalog.now() "
				   "OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2::pg_catalog.float8) ELSE run_after END, "
				   "attempts = CASE WHEN $5::pg_catalog.bool AND generation OPERATOR(pg_catalog.=) $4::pg_catalog.int8 "
				   "THEN GREATEST(attempts OPERATOR(pg_catalog.-) 1, 0) ELSE attempts END "
				   "WHERE user_id IN (SELECT user_id FROM fly.reconcile_queue "
				   "WHERE user_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid FOR UPDATE SKIP LOCKED) RETURNING 1",
				   {user_id, Seconds(delay_seconds), error, std::to_string(generation),
					std::string(return_attempt ? "true" : "false")})
				.empty();
}

std::map<std::string, int64_t>
ReturnAttempts(pg::SpiConnection &spi, const std::map<std::string, int64_t> &items) {
	Json list = Json::Array();
	for (const auto &[user_id, generation] : items) {
		Json item = Json::Object();
		item.Set("user_id", Json::String(user_id));
		item.Set("generation", Json::String(std::to_string(generation)));
		list.Append(item);
	}
	// Only the same generation, still claimed: a newer tier change or a finished item has nothing to give back.
	// Both statements are literals: the cache of prepared plans is keyed by their address.
	static const char *const select =
	    "SELECT q.user_id, q.generation "
	    "FROM fly.reconcile_queue q JOIN pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) AS r "
	    "(user_id pg_catalog.uuid, generation pg_catalog.int8) ON q.user_id OPERATOR(pg_catalog.=) r.user_id "
	    "AND q.generation OPERATOR(pg_catalog.=) r.generation WHERE q.claimed_at IS NOT NULL";
	static const char *const update =
	    "UPDATE fly.reconcile_queue SET attempts = GREATEST(attempts OPERATOR(pg_catalog.-) 1, 0) "
	    "WHERE user_id OPERATOR(pg_catalog.=) ANY (SELECT q.user_id "
	    "FROM fly.reconcile_queue q JOIN pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) AS r "
	    "(user_id pg_catalog.uuid, generation pg_catalog.int8) ON q.user_id OPERATOR(pg_catalog.=) r.user_id "
	    "AND q.generation OPERATOR(pg_catalog.=) r.generation WHERE q.claimed_at IS NOT NULL "
	    "FOR UPDATE OF q SKIP LOCKED) RETURNING user_id";
	const std::string items_json = list.Dump();
	std::map<std::string, int64_t> held;
	for (const auto &row : spi.Query(select, {items_json}, true)) {
		held[row[0].value_or("")] = ToInt(row[1]);
	}
	for (const auto &row : spi.Query(update, {items_json})) {
		held.erase(row[0].value_or(""));
	}
	return held;
}

} // namespace pgfly
