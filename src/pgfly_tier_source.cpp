// Reading the application's subscription table from pg_fly's SECURITY DEFINER functions.
//
// Those functions run as the extension's owner, a superuser, while the table belongs to an ordinary role that
// decides what reading it runs: casts and domain checks on its column types, a view's rules, RLS policies,
// index, statistics and CHECK expressions the planner folds, foreign partitions. So the table is checked at
// every call (an ordinary or partitioned table whose members are ordinary tables, columns of the types pg_fly
// reads) and read the way PostgreSQL's own maintenance commands read a table: as its owner, inside a
// security-restricted operation, with a pinned search_path; values come out through their types' output
// functions, never through a cast. The owner's code then runs with the owner's rights only.
//
// Postgres-regime code: no C++ objects, errors by ereport (as in PgFlyWorkerMain), so no longjmp skips a
// destructor. (IsUuidText, from the core, takes a std::string_view: nothing to destroy, and it cannot throw.)
#include "pgfly/pg/postgres.hpp"

#include "pgfly/core/sql_text.hpp"

extern "C" {
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_am.h"
#include "catalog/pg_index.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "lib/stringinfo.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/uuid.h"
}

namespace {

constexpr long kFetchRows = 1000;

const char *
RelationNoun(char relkind) {
	switch (relkind) {
	case RELKIND_VIEW:
		return "a view";
	case RELKIND_MATVIEW:
		return "a materialized view";
	case RELKIND_FOREIGN_TABLE:
		return "a foreign table";
	case RELKIND_SEQUENCE:
		return "a sequence";
	case RELKIND_COMPOSITE_TYPE:
		return "a composite type";
	case RELKIND_INDEX:
	case RELKIND_PARTITIONED_INDEX:
		return "an index";
	default:
		return "not an ordinary table";
	}
}

char *
QualifiedName(Oid relid) {
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

bool
IsTable(char relkind) {
	return relkind == RELKIND_RELATION || relkind == RELKIND_PARTITIONED_TABLE;
}

// The column's type, or an error naming the column when it is missing.
Oid
ColumnType(Oid relid, const char *table, const char *column, const char *role) {
	const AttrNumber attnum = get_attnum(relid, column);
	if (attnum <= 0) {
		ereport(ERROR,
		        (errcode(ERRCODE_UNDEFINED_COLUMN), errmsg("column \"%s\" of table %s does not exist", column, table),
		         errdetail("pg_fly was attached with it as the %s column.", role),
		         errhint("Attach the table again naming its columns: SELECT fly.attach_tier_trigger('%s', "
		                 "'<user id column>', '<tier column>').",
		                 table)));
	}
	return get_atttype(relid, attnum);
}

[[noreturn]] void
RefuseColumnType(const char *table, const char *column, Oid type, const char *role, const char *wanted,
                 const char *alter_to) {
	const bool domain = get_typtype(type) == TYPTYPE_DOMAIN;
	ereport(ERROR,
	        (errcode(ERRCODE_DATATYPE_MISMATCH),
	         errmsg("column \"%s\" of table %s is of type %s, which pg_fly does not read as a %s", column, table,
	                format_type_be(type), role),
	         domain ? errdetail("It is a domain over %s: reading it could run the domain's checks, code chosen by its "
	                            "owner, with the extension's rights.",
	                            format_type_be(getBaseType(type)))
	                : errdetail("pg_fly reads %s.", wanted),
	         errhint("Change the column's type, e.g. ALTER TABLE %s ALTER COLUMN %s TYPE %s.", table,
	                 quote_identifier(column), alter_to)));
}

// Everything pg_fly requires of the subscription table before it reads it. Returns the user column's type and,
// in *members, the table and its partitions and children as checked. Their AccessShareLock keeps each of them
// from being dropped or altered, but not new members from being added (ATTACH PARTITION and INHERIT take a
// ShareUpdateExclusiveLock; the owner's own code can do it while the read is planned): so the read names each
// checked member with ONLY and never reaches one added since.
Oid
CheckTierSource(Oid relid, const char *user_column, const char *tier_column, List **members = nullptr) {
	LockRelationOid(relid, AccessShareLock);
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid))) {
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
		                errmsg("the subscription table pg_fly was attached to (OID %u) no longer exists", relid),
		                errhint("Attach the table that holds the subscriptions: SELECT fly.attach_tier_trigger("
		                        "'<schema.table>', '<user id column>', '<tier column>').")));
	}
	char *table = QualifiedName(relid);
	const char relkind = get_rel_relkind(relid);
	if (!IsTable(relkind)) {
		ereport(ERROR,
		        (errcode(ERRCODE_WRONG_OBJECT_TYPE), errmsg("%s is %s, not a table", table, RelationNoun(relkind)),
		         errdetail("pg_fly reads subscriptions only from an ordinary or partitioned table: reading a view "
		                   "or a foreign table runs code its owner chose."),
		         errhint("Make %s an ordinary table again, or attach the table that holds the subscriptions "
		                 "with fly.attach_tier_trigger().",
		                 table)));
	}
	// Reading a table reads its partitions and inheritance children too.
	List *checked = find_all_inheritors(relid, AccessShareLock, nullptr);
	ListCell *cell;
	foreach (cell, checked) {
		const Oid member = lfirst_oid(cell);
		const char member_kind = get_rel_relkind(member);
		if (member != relid && !IsTable(member_kind)) {
			char *name = QualifiedName(member);
			ereport(ERROR,
			        (errcode(ERRCODE_WRONG_OBJECT_TYPE),
			         errmsg("%s, a partition or child table of %s, is %s", name, table, RelationNoun(member_kind)),
			         errdetail("pg_fly reads subscriptions only from ordinary tables: reading a foreign table "
			                   "runs code its owner chose."),
			         errhint("Detach it (ALTER TABLE %s DETACH PARTITION %s, or ALTER TABLE %s NO INHERIT %s) "
			                 "or move its rows into an ordinary table.",
			                 table, name, name, table)));
		}
	}
	const Oid user_type = ColumnType(relid, table, user_column, "user id");
	if (user_type != UUIDOID && user_type != TEXTOID && user_type != VARCHAROID) {
		RefuseColumnType(table, user_column, user_type, "user id", "user ids from uuid, text or varchar columns",
		                 "uuid");
	}
	const Oid tier_type = ColumnType(relid, table, tier_column, "tier");
	if (tier_type != TEXTOID && tier_type != VARCHAROID && get_typtype(tier_type) != TYPTYPE_ENUM) {
		RefuseColumnType(table, tier_column, tier_type, "tier", "tiers from text, varchar or enum columns", "text");
	}
	if (members != nullptr) {
		*members = checked;
	}
	return user_type;
}

// The user id of a row as a uuid (0: it is not one, by the trigger's rule, IsUuidText): a uuid column's value
// as it is, a text one's parsed once it is known to parse. `id_text` is the id as a text Datum.
Datum
UserUuid(HeapTuple row, TupleDesc desc, bool uuid_column, Datum id_text) {
	if (uuid_column) {
		bool isnull = false;
		const Datum value = SPI_getbinval(row, desc, 1, &isnull);
		if (isnull) {
			return 0;
		}
		pg_uuid_t *copy = static_cast<pg_uuid_t *>(palloc(sizeof(pg_uuid_t)));
		memcpy(copy, DatumGetUUIDP(value), sizeof(pg_uuid_t));
		return UUIDPGetDatum(copy);
	}
	char *id = text_to_cstring(DatumGetTextPP(id_text));
	Datum uuid = 0;
	if (pgfly::IsUuidText(id)) {
		uuid = DirectFunctionCall1(uuid_in, CStringGetDatum(id));
	}
	pfree(id);
	return uuid;
}

void
RequireArguments(FunctionCallInfo fcinfo, int count) {
	for (int i = 0; i < count; i++) {
		if (PG_ARGISNULL(i)) {
			ereport(ERROR,
			        (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("table and column names must not be NULL")));
		}
	}
}

// Which of the table's rows a read returns.
struct RowFilter {
	enum Kind { kAll, kUser, kUsers, kAfter } kind = kAll;
	Datum value = 0; // kUser: a uuid; kUsers: a uuid[]; kAfter: a text, or 0 for the first batch
	bool has_value = false;
	int batch_size = 0; // kAfter: at least this many rows (more when the last user has several)
};

// A sorted set of uuids (kUsers): which users a read returns, and which of them it found.
struct UuidSet {
	pg_uuid_t *items = nullptr;
	bool *found = nullptr;
	int count = 0;
};

int
CompareUuids(const void *a, const void *b) {
	return memcmp(a, b, UUID_LEN);
}

// The non-NULL elements of a uuid[], sorted, without duplicates.
UuidSet
UuidSetOf(Datum array) {
	Datum *elements = nullptr;
	bool *nulls = nullptr;
	int n = 0;
	deconstruct_array(DatumGetArrayTypeP(array), UUIDOID, UUID_LEN, false, TYPALIGN_CHAR, &elements, &nulls, &n);
	UuidSet set;
	set.items = static_cast<pg_uuid_t *>(palloc(sizeof(pg_uuid_t) * (n > 0 ? n : 1)));
	for (int i = 0; i < n; i++) {
		if (!nulls[i]) {
			memcpy(&set.items[set.count++], DatumGetUUIDP(elements[i]), UUID_LEN);
		}
	}
	qsort(set.items, set.count, sizeof(pg_uuid_t), CompareUuids);
	int kept = 0;
	for (int i = 0; i < set.count; i++) {
		if (kept == 0 || memcmp(&set.items[kept - 1], &set.items[i], UUID_LEN) != 0) {
			set.items[kept++] = set.items[i];
		}
	}
	set.count = kept;
	set.found = static_cast<bool *>(palloc0(sizeof(bool) * (kept > 0 ? kept : 1)));
	return set;
}

// The set's members not found yet.
UuidSet
NotFound(const UuidSet &set) {
	UuidSet rest;
	rest.items = static_cast<pg_uuid_t *>(palloc(sizeof(pg_uuid_t) * (set.count > 0 ? set.count : 1)));
	for (int i = 0; i < set.count; i++) {
		if (!set.found[i]) {
			rest.items[rest.count++] = set.items[i];
		}
	}
	rest.found = static_cast<bool *>(palloc0(sizeof(bool) * (rest.count > 0 ? rest.count : 1)));
	return rest;
}

// The spellings of each uuid a text column is likely to hold, as a text[]: lower or upper case, with or without
// the dashes, with or without braces. An index finds these; other spellings uuid_in accepts (a dash after any
// four digits, mixed case) only a full read does.
Datum
CommonSpellings(const UuidSet &set) {
	constexpr int kForms = 6;
	const int n = set.count * kForms;
	Datum *forms = static_cast<Datum *>(palloc(sizeof(Datum) * (n > 0 ? n : 1)));
	for (int i = 0; i < set.count; i++) {
		char *lower = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&set.items[i])));
		char upper[UUID_LEN * 2 + 5];
		char lower_bare[UUID_LEN * 2 + 1];
		char upper_bare[UUID_LEN * 2 + 1];
		int bare = 0;
		size_t j = 0;
		for (; lower[j] != '\0'; j++) {
			upper[j] = static_cast<char>(pg_toupper(static_cast<unsigned char>(lower[j])));
			if (lower[j] != '-') {
				lower_bare[bare] = lower[j];
				upper_bare[bare] = upper[j];
				bare++;
			}
		}
		upper[j] = '\0';
		lower_bare[bare] = '\0';
		upper_bare[bare] = '\0';
		forms[i * kForms] = CStringGetTextDatum(lower);
		forms[i * kForms + 1] = CStringGetTextDatum(upper);
		forms[i * kForms + 2] = CStringGetTextDatum(lower_bare);
		forms[i * kForms + 3] = CStringGetTextDatum(upper_bare);
		forms[i * kForms + 4] = CStringGetTextDatum(psprintf("{%s}", lower));
		forms[i * kForms + 5] = CStringGetTextDatum(psprintf("{%s}", upper));
		pfree(lower);
	}
	return PointerGetDatum(construct_array(forms, n, TEXTOID, -1, false, TYPALIGN_INT));
}

// Whether `index` serves the batch reader's `user > $1 ORDER BY user` as an ordered scan: valid, not partial, its
// first key the column itself (not an expression), with the column type's default btree opclass (so btree, and
// ordered by the type's own `<`: a pattern_ops index is not) and the column's own collation, ascending with nulls
// last or the exact reverse (scanned backward). Anything else leaves the planner a full read and a sort.
bool
IndexServesBatch(Oid index, AttrNumber attnum, Oid opclass, Oid collation) {
	HeapTuple tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(index));
	if (!HeapTupleIsValid(tuple)) {
		return false;
	}
	const Form_pg_index form = reinterpret_cast<Form_pg_index>(GETSTRUCT(tuple));
	bool serves = form->indisvalid && form->indnkeyatts >= 1 && form->indkey.values[0] == attnum &&
	              heap_attisnull(tuple, Anum_pg_index_indpred, nullptr);
	if (serves) {
		bool null_classes = false;
		bool null_collations = false;
		bool null_options = false;
		const Datum classes = SysCacheGetAttr(INDEXRELID, tuple, Anum_pg_index_indclass, &null_classes);
		const Datum collations = SysCacheGetAttr(INDEXRELID, tuple, Anum_pg_index_indcollation, &null_collations);
		const Datum options = SysCacheGetAttr(INDEXRELID, tuple, Anum_pg_index_indoption, &null_options);
		serves = !null_classes && !null_collations && !null_options;
		if (serves) {
			const int16 option = reinterpret_cast<int2vector *>(DatumGetPointer(options))->values[0];
			serves = reinterpret_cast<oidvector *>(DatumGetPointer(classes))->values[0] == opclass &&
			         reinterpret_cast<oidvector *>(DatumGetPointer(collations))->values[0] == collation &&
			         ((option & INDOPTION_DESC) != 0) == ((option & INDOPTION_NULLS_FIRST) != 0);
		}
	}
	ReleaseSysCache(tuple);
	return serves;
}

// Whether every member that holds rows has an index that serves the batch reader (IndexServesBatch): then a batch
// is an index scan, not a full read of the table.
bool
UserColumnIndexed(List *members, const char *user_column) {
	ListCell *cell;
	foreach (cell, members) {
		const Oid member = lfirst_oid(cell);
		if (get_rel_relkind(member) != RELKIND_RELATION) {
			continue;
		}
		const AttrNumber attnum = get_attnum(member, user_column);
		if (attnum <= 0) {
			return false; // no such column (an expression index's key is 0 too)
		}
		Oid type = InvalidOid;
		int32 typmod = -1;
		Oid collation = InvalidOid;
		get_atttypetypmodcoll(member, attnum, &type, &typmod, &collation);
		const Oid opclass = GetDefaultOpClass(type, BTREE_AM_OID);
		if (!OidIsValid(opclass)) {
			return false;
		}
		Relation rel = table_open(member, NoLock); // locked by CheckTierSource
		List *indexes = RelationGetIndexList(rel);
		table_close(rel, NoLock);
		bool indexed = false;
		ListCell *index_cell;
		foreach (index_cell, indexes) {
			if (IndexServesBatch(lfirst_oid(index_cell), attnum, opclass, collation)) {
				indexed = true;
				break;
			}
		}
		list_free(indexes);
		if (!indexed) {
			return false;
		}
	}
	return true;
}

// The union of the checked members' rows (ONLY each; partitioned tables hold none), each member's rows limited by
// `where` (printf'd with the quoted user column, or NULL for all rows).
char *
MembersSql(List *members, const char *user, const char *tier, const char *where) {
	StringInfoData sql;
	initStringInfo(&sql);
	ListCell *cell;
	foreach (cell, members) {
		const Oid member = lfirst_oid(cell);
		if (get_rel_relkind(member) != RELKIND_RELATION) {
			continue;
		}
		appendStringInfo(&sql, "%sSELECT %s, %s FROM ONLY %s", sql.len > 0 ? " UNION ALL " : "", user, tier,
		                 QualifiedName(member));
		if (where != nullptr) {
			appendStringInfoString(&sql, " WHERE ");
			appendStringInfo(&sql, where, user, user);
		}
	}
	if (sql.len == 0) {
		// A partitioned table without partitions: no rows, and the row shape the caller expects.
		appendStringInfoString(&sql, "SELECT NULL::pg_catalog.text, NULL::pg_catalog.text WHERE false");
	}
	return sql.data;
}

// Runs `sql` (read-only, on the caller's snapshot, so that a caller comparing the rows with pg_fly's own tables
// in the same statement sees both as of one moment) and adds its rows to the result. With `want`, only the rows
// whose user id is one of its uuids, marking those found. Runs as the table's owner (the caller's doing).
void
ReadInto(ReturnSetInfo *rsinfo, const char *sql, int nargs, Oid *argtypes, Datum *args, bool uuid_column,
         UuidSet *want) {
	// A third result column (uid): the user id as a uuid, so that callers need not match every id against a
	// pattern and cast it.
	const bool with_uid = rsinfo->setDesc->natts == 3;
	Portal portal = SPI_cursor_open_with_args(nullptr, sql, nargs, argtypes, args, nullptr, true, 0);
	for (;;) {
		SPI_cursor_fetch(portal, true, kFetchRows);
		if (SPI_processed == 0) {
			break;
		}
		for (uint64 i = 0; i < SPI_processed; i++) {
			Datum values[3] = {0, 0, 0};
			bool nulls[3] = {true, true, true};
			for (int c = 0; c < 2; c++) {
				// The type's output function (uuid, text, varchar or enum: all built in).
				char *text = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, c + 1);
				nulls[c] = text == nullptr;
				values[c] = 0;
				if (text != nullptr) {
					values[c] = CStringGetTextDatum(text);
					pfree(text);
				}
			}
			if ((with_uid || want != nullptr) && !nulls[0]) {
				values[2] = UserUuid(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, uuid_column, values[0]);
				nulls[2] = values[2] == 0;
			}
			bool keep = true;
			if (want != nullptr) {
				void *hit = nulls[2] ? nullptr
				                     : bsearch(DatumGetUUIDP(values[2]), want->items, want->count, sizeof(pg_uuid_t),
				                               CompareUuids);
				keep = hit != nullptr;
				if (keep) {
					want->found[static_cast<pg_uuid_t *>(hit) - want->items] = true;
				}
			}
			if (keep) {
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
			for (int c = 0; c < 3; c++) {
				if (!nulls[c]) {
					pfree(DatumGetPointer(values[c]));
				}
			}
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
}

// The table's rows that `filter` selects, as (user_id text, tier text[, uid uuid]), read as the table's owner
// inside a security-restricted operation after checking the table. Every reader of the subscription table goes
// through here.
Datum
ReadSubscriptions(FunctionCallInfo fcinfo, const char *function, const RowFilter &filter) {
	RequireArguments(fcinfo, 3);
	// It reads with the owner's rights: only pg_fly's own SECURITY DEFINER functions (and its worker) may call it.
	if (!superuser()) {
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("%s is pg_fly's own", function)));
	}
	const Oid relid = PG_GETARG_OID(0);
	const char *user_column = NameStr(*PG_GETARG_NAME(1));
	const char *tier_column = NameStr(*PG_GETARG_NAME(2));
	List *members = NIL;
	const Oid user_type = CheckTierSource(relid, user_column, tier_column, &members);
	const bool uuid_column = user_type == UUIDOID;

	HeapTuple class_tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(class_tuple)) {
		elog(ERROR, "pg_fly: cache lookup failed for relation %u", relid);
	}
	const Oid owner = reinterpret_cast<Form_pg_class>(GETSTRUCT(class_tuple))->relowner;
	ReleaseSysCache(class_tuple);

	const char *user = quote_identifier(user_column);
	const char *tier = quote_identifier(tier_column);
	// The parameter as the column's own type, so that the built-in operator of that type applies (pinned).
	const char *param = uuid_column ? "$1::pg_catalog.uuid" : "$1";
	Oid argtypes[1] = {TEXTOID};
	Datum args[1] = {0};
	int nargs = filter.has_value ? 1 : 0;
	// kUsers: the users wanted, and (a text column) how to find them.
	UuidSet want;
	bool probe = false;
	char *sql = nullptr;
	switch (filter.kind) {
	case RowFilter::kAll:
		sql = MembersSql(members, user, tier, nullptr);
		break;
	case RowFilter::kUser:
		if (nargs > 0) {
			argtypes[0] = uuid_column ? static_cast<Oid>(UUIDOID) : static_cast<Oid>(TEXTOID);
			args[0] = uuid_column ? filter.value
			                      : CStringGetTextDatum(DatumGetCString(DirectFunctionCall1(uuid_out, filter.value)));
		}
		sql = MembersSql(members, user, tier, nargs > 0 ? "%s OPERATOR(pg_catalog.=) $1" : nullptr);
		break;
	case RowFilter::kUsers:
		// A uuid column is asked for the uuids. A text one is asked for their common spellings when an index
		// answers that; the users it did not find so (and every user, without an index) are looked for in a full
		// read that compares each row's id as a uuid, the trigger's way (IsUuidText).
		want = UuidSetOf(filter.value);
		nargs = 1;
		if (uuid_column) {
			argtypes[0] = UUIDARRAYOID;
			args[0] = filter.value;
			sql = MembersSql(members, user, tier, "%s OPERATOR(pg_catalog.=) ANY ($1)");
		} else if (UserColumnIndexed(members, user_column)) {
			probe = true;
			argtypes[0] = TEXTARRAYOID;
			args[0] = CommonSpellings(want);
			sql = MembersSql(members, user, tier, "%s OPERATOR(pg_catalog.=) ANY ($1)");
		} else {
			nargs = 0;
			sql = MembersSql(members, user, tier, "%s IS NOT NULL");
		}
		break;
	case RowFilter::kAfter: {
		args[0] = filter.value;
		char *where =
			psprintf("%%s IS NOT NULL%s", nargs > 0 ? psprintf(" AND %%s OPERATOR(pg_catalog.>) %s", param) : "");
		// In the user column's order (its type's default ordering, built in), never splitting one user's rows.
		sql = psprintf("SELECT s.u, s.t FROM (%s) AS s(u, t) ORDER BY s.u FETCH FIRST %d ROWS WITH TIES",
		               MembersSql(members, user, tier, where), filter.batch_size);
		break;
	}
	}

	InitMaterializedSRF(fcinfo, 0);
	ReturnSetInfo *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);

	Oid saved_user;
	int saved_context;
	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(owner, saved_context | SECURITY_RESTRICTED_OPERATION);
	const int guc_level = NewGUCNestLevel();
	set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
	                  false);
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT) {
			elog(ERROR, "pg_fly: SPI_connect failed");
		}
		const bool filtered = filter.kind == RowFilter::kUsers && !uuid_column;
		ReadInto(rsinfo, sql, nargs, argtypes, args, uuid_column, filtered ? &want : nullptr);
		if (probe) {
			UuidSet rest = NotFound(want);
			if (rest.count > 0) {
				ReadInto(rsinfo, MembersSql(members, user, tier, "%s IS NOT NULL"), 0, argtypes, args, false, &rest);
			}
		}
		SPI_finish();
	}
	PG_CATCH();
	{
		// The transaction's abort restores both as well; no code runs as the owner after an error either way.
		SetUserIdAndSecContext(saved_user, saved_context);
		PG_RE_THROW();
	}
	PG_END_TRY();
	AtEOXact_GUC(false, guc_level);
	SetUserIdAndSecContext(saved_user, saved_context);
	return static_cast<Datum>(0);
}

} // namespace

extern "C" {

// fly._check_tier_source(tbl regclass, user_column name, tier_column name): errors that name what pg_fly cannot
// read safely (attach_tier_trigger checks the table with it).
PG_FUNCTION_INFO_V1(_check_tier_source);
Datum
_check_tier_source(PG_FUNCTION_ARGS) {
	RequireArguments(fcinfo, 3);
	CheckTierSource(PG_GETARG_OID(0), NameStr(*PG_GETARG_NAME(1)), NameStr(*PG_GETARG_NAME(2)));
	PG_RETURN_VOID();
}

// fly._subscription_rows(tbl regclass, user_column name, tier_column name, user_id uuid) RETURNS TABLE (user_id
// text, tier text): the table's rows (only the user's, when user_id is not NULL), read as the table's owner.
PG_FUNCTION_INFO_V1(_subscription_rows);
Datum
_subscription_rows(PG_FUNCTION_ARGS) {
	RowFilter filter;
	filter.kind = RowFilter::kUser;
	filter.has_value = !PG_ARGISNULL(3);
	filter.value = filter.has_value ? PG_GETARG_DATUM(3) : 0;
	return ReadSubscriptions(fcinfo, "fly._subscription_rows()", filter);
}

// fly._subscription_batch(tbl regclass, user_column name, tier_column name, after_user text, batch_size integer)
// RETURNS TABLE (user_id text, tier text, uid uuid): the next batch of rows in user id order after after_user (from
// the start when NULL; rows without a user id are left out); uid is the id as a uuid, NULL when it is not one. A user's
// rows are never split between batches, so a batch may hold more than batch_size rows. Each call locks the table only
// until its transaction ends.
PG_FUNCTION_INFO_V1(_subscription_batch);
Datum
_subscription_batch(PG_FUNCTION_ARGS) {
	RowFilter filter;
	filter.kind = RowFilter::kAfter;
	filter.has_value = !PG_ARGISNULL(3);
	filter.value = filter.has_value ? PG_GETARG_DATUM(3) : 0;
	if (PG_ARGISNULL(4) || PG_GETARG_INT32(4) < 1 || PG_GETARG_INT32(4) > 100000) {
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("batch_size must be between 1 and 100000")));
	}
	filter.batch_size = PG_GETARG_INT32(4);
	return ReadSubscriptions(fcinfo, "fly._subscription_batch()", filter);
}

// fly._subscription_rows_of(tbl regclass, user_column name, tier_column name, user_ids uuid[]) RETURNS TABLE
// (user_id text, tier text, uid uuid): the rows whose user id, read as a uuid the trigger's way, is one of
// user_ids, in whatever spelling a text column holds it; uid is the id as a uuid.
PG_FUNCTION_INFO_V1(_subscription_rows_of);
Datum
_subscription_rows_of(PG_FUNCTION_ARGS) {
	if (PG_ARGISNULL(3)) {
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("user_ids must not be NULL")));
	}
	RowFilter filter;
	filter.kind = RowFilter::kUsers;
	filter.has_value = true;
	filter.value = PG_GETARG_DATUM(3);
	return ReadSubscriptions(fcinfo, "fly._subscription_rows_of()", filter);
}

// fly._subscription_user_indexed(tbl regclass, user_column name) RETURNS boolean: whether every member of the
// table that holds rows has a btree index on the user column (first key). Without one, every batch is a full
// read of the table, so the drift pass reads larger ones.
PG_FUNCTION_INFO_V1(_subscription_user_indexed);
Datum
_subscription_user_indexed(PG_FUNCTION_ARGS) {
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1)) {
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("table and column names must not be NULL")));
	}
	const Oid relid = PG_GETARG_OID(0);
	LockRelationOid(relid, AccessShareLock);
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid))) {
		PG_RETURN_BOOL(false);
	}
	List *members = find_all_inheritors(relid, AccessShareLock, nullptr);
	PG_RETURN_BOOL(UserColumnIndexed(members, NameStr(*PG_GETARG_NAME(1))));
}

} // extern "C"
