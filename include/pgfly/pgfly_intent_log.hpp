// The tier-change log (fly.tier_intents, schema 0.3.0). The subscription trigger appends one row per change: a
// heap insert into a table without index, the cheapest durable write there is. The worker folds the rows into
// fly.reconcile_queue in batches, in seq order; a user's rows from one subscription row are in commit order,
// because the row's lock makes a second change wait, and take its seq, until the first one has committed.
// Every other writer of a user's queue item folds that user's rows first (FoldUserIntents), so that an older
// change never overwrites a newer direct write.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pgfly/pg/postgres.hpp"
#include "pgfly/pg/spi.hpp"

namespace pgfly {

enum class IntentKind : char {
	kPresent = 'p', // the user's tier grants an app: desired present, with the tier
	kAbsent = 'a',  // it grants none: desired absent
	kRelabel = 'r', // the tier changed between two with the same policy: only the name changes
};

// Where the log and its sequence are; both InvalidOid before schema 0.3.0's issue 16 part.
struct IntentLog {
	Oid relid = InvalidOid;
	Oid seq_relid = InvalidOid;
	// Whether the trigger may insert into it without the executor: the columns are the ones it writes, and no
	// index, trigger, rule or row security has been added to it since (any of those would be skipped).
	bool appendable = false;
};

// Looks the log up in the catalogs (no query).
IntentLog FindIntentLog();

// Appends one row in the caller's transaction. log.appendable must hold; user_id is uuid text.
void AppendIntent(const IntentLog &log, const std::string &user_id, IntentKind kind, const pg::Value &tier,
                  const char *reason);

struct FoldResult {
	int64_t folded = 0; // log rows applied and deleted
	int64_t queued = 0; // users whose queue item was inserted or replaced (work for the worker)
};

// Folds every row of the log visible now, leaving out `skip_users` (only `user`'s rows when given). Rows another
// fold is deleting are waited for (lock_timeout applies), then left to it.
FoldResult FoldIntents(pg::SpiConnection &spi, const std::vector<std::string> &skip_users,
                       const pg::Value &user = std::nullopt);

// Before a direct write of the user's queue item: waits for any transaction still adding a row for the user to
// the log (or, with nowait, fails at once with lock_not_available, as FOR UPDATE NOWAIT would), then folds the
// user's rows. Returns how many it folded.
int64_t FoldUserIntents(pg::SpiConnection &spi, const std::string &user_id, bool nowait);

} // namespace pgfly
