// The reconcile queue (fly.reconcile_queue): at most one pending item per user, carrying the latest desired
// state. Enqueueing is an upsert that bumps the item's generation, so a worker holding an older generation
// can tell its result is stale. The worker claims due items for a lease, renews and releases its claims, and
// defers an item whose step could not be recorded. Each function runs inside the caller's transaction.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pgfly/pg/spi.hpp"

namespace pgfly {

enum class DesiredState { kPresent, kAbsent };

// Upserts the user's queue item and wakes the worker when the transaction commits.
// user_id is text that casts to uuid; tier may be empty for kAbsent.
void EnqueueReconcile(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                      const char *reason);

// How an enqueue treats fly.manual_teardowns (schema 0.3.0): a newer intent ends a manual teardown.
enum class TeardownClearing {
	kIfTableExists, // clear it in the same statement when the table exists
	kSkip,          // the caller knows there is nothing to clear (the trigger's cache), or no such table
};

// EnqueueReconcile with the teardown clearing chosen by the caller.
void EnqueueReconcile(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                      const char *reason, TeardownClearing clearing);

// Ends the user's manual teardown; whether there was one.
bool EndManualTeardown(pg::SpiConnection &spi, const std::string &user_id);

// Queues the item only when the user has none: a queued item is newer intent (a tier change, say) than what
// the caller saw. Returns whether it queued one.
bool EnqueueUnlessQueued(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired,
                         const pg::Value &tier, const char *reason);
// What a caller saw of a user before comparing: the queue item's generation and enqueued_at (exact seconds since
// the Unix epoch, as text: independent of DateStyle and TimeZone; NULL: none), and
// the live app row's id (NULL: none).
struct QueueItemSeen {
	pg::Value generation;
	pg::Value enqueued_at;
	pg::Value app_id;
};
// Queues the item only when the user's queue item and live app row are still the ones `seen` names. Returns
// whether it queued one.
bool EnqueueIfUnchanged(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired, const pg::Value &tier,
                        const char *reason, const QueueItemSeen &seen);

struct ClaimedItem {
	std::string user_id;
	bool present = false;
	pg::Value tier;
	int64_t generation = 0;
	int attempts = 0;
	bool alerted = false;
};

// Claims lease a queue item for this long; every recorded step renews the lease.
constexpr int kLeaseSeconds = 600;

// Releases the claims of items whose user has no operation in `running`: orphans of a previous worker (there is
// one worker per cluster) or of a step that could not be recorded. Returns false when rows another transaction
// holds were skipped.
bool ReleaseOrphanClaims(pg::SpiConnection &spi, const std::vector<std::string> &running);
// Releases the user's claim, whatever its generation.
void ReleaseClaim(pg::SpiConnection &spi, const std::string &user_id);
// Claims up to `limit` due items (FOR UPDATE SKIP LOCKED), oldest first, counting an attempt on each; never one
// of `running` (users whose operation is still going, even if its lease ran out).
std::vector<ClaimedItem> ClaimDueItems(pg::SpiConnection &spi, int limit, const std::vector<std::string> &running);
// Extends the leases of the items of operations still going (not of rows another transaction holds).
void RenewLeases(pg::SpiConnection &spi, const std::vector<std::string> &users);
struct QueueSummary {
	// Items due now, claimed or not; nothing when not counted.
	std::optional<int64_t> due;
	// Until the next unclaimed item is due, or a claim's lease runs out (0 if now); nothing when the queue is empty.
	std::optional<double> seconds_until_next_due;
};
// The next due time reads two index entries, whatever the backlog; `count` also counts the due items, which reads
// all of them (a status figure: the caller asks for it at most once a second). An empty queue is counted anyway.
QueueSummary SummarizeQueue(pg::SpiConnection &spi, bool count);

// After an error that left a step unrecorded: release the claim and retry the item later. Returns false when
// another transaction holds the item (nothing was changed). return_attempt gives back the attempt counted at
// claim time (the step failed only because another transaction held the item).
bool DeferItem(pg::SpiConnection &spi, const std::string &user_id, int64_t generation, double delay_seconds,
               const std::string &error, bool return_attempt);
// Gives back the attempt counted when each item (user -> generation) was claimed, while it is still claimed: its
// step failed only because another transaction held it. Returns the items still held by others.
std::map<std::string, int64_t> ReturnAttempts(pg::SpiConnection &spi, const std::map<std::string, int64_t> &items);

} // namespace pgfly
