// The reconcile queue (fly.reconcile_queue): at most one pending item per user, carrying the latest desired
// state. Enqueueing is an upsert that bumps the item's generation, so a worker holding an older generation
// can tell its result is stale.
#pragma once

#include <string>

#include "pgfly/pg/spi.hpp"

namespace pgfly {

enum class DesiredState { kPresent, kAbsent };

// Upserts the user's queue item and wakes the worker when the transaction commits.
// user_id is text that casts to uuid; tier may be empty for kAbsent.
void EnqueueReconcile(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired,
                      const pg::Value &tier, const char *reason);
// Queues the item only when the user has none: a queued item is newer intent (a tier change, say) than what
// the caller saw. Returns whether it queued one.
bool EnqueueUnlessQueued(pg::SpiConnection &spi, const std::string &user_id, DesiredState desired,
                         const pg::Value &tier, const char *reason);

} // namespace pgfly
