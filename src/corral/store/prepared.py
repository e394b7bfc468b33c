"""Hot-path statements run on the driver's cursor (issue #18).

SQLAlchemy's ``Connection.execute`` of a statement it has cached still builds
an execution context, processes each bind, and wraps the cursor in a result
with its metadata: about half the CPU of a one-row statement on SQLite (a job
row by id: 48 us through ``execute``, 25 us on the cursor with the same type
processing). A job's path runs ~25 statements in the writer thread, so
``Prepared`` compiles a statement once per dialect (SQL text, positional bind
order, the columns' bind and result processors, all from SQLAlchemy's public
API) and runs it on the DBAPI connection of the same ``sa.Connection``, inside
the same transaction. The rows are named tuples with ``_mapping``; driver
errors are wrapped into SQLAlchemy's (``sa.exc.IntegrityError``,
``OperationalError``), as ``execute`` would.

Only statements built once with ``sa.bindparam`` (or an insert whose columns
are given per call) belong here, with no Python-side column defaults (the
compile refuses those). An ``IN`` list (an expanding bind parameter, or a
literal list such as ``state.in_(ACTIVE_STATES)``) is written out as one
parameter per item, one plan per list length: SQLAlchemy redoes that
expansion on every execution (~70 us for the lease's candidates query).
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BinaryExpression, BindParameter

Processor = Callable[[Any], Any]
_NONE = object()


class Rows:
    """What a prepared statement returned: the few ``sa.Result`` methods the
    store uses on its hot path."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise sa.exc.MultipleResultsFound(
                "multiple rows were found when one or none was required"
            )
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            if self._rows:
                raise sa.exc.MultipleResultsFound("multiple rows were found when one was required")
            raise sa.exc.NoResultFound("no row was found when one was required")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


def _row_class(keys: Sequence[str]) -> type[tuple[Any, ...]]:
    # An unnamed column (``count(*)``) is reached by position: renamed ``_N``.
    base = collections.namedtuple("Row", keys, rename=True)  # type: ignore[misc]

    class Row(base):
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(self._fields, self, strict=True))

    return Row


def _lists(statement: sa.ClauseElement) -> tuple[bool, tuple[str, ...]]:
    """Whether ``statement`` has ``IN`` lists, and the keys of those a call
    gives (required expanding binds; the others are literal lists)."""
    keys: dict[str, None] = {}
    found = False
    for element in visitors.iterate(statement):
        if isinstance(element, BindParameter) and element.expanding:
            found = True
            if element.required:
                keys[element.key] = None
    return found, tuple(keys)


def _item(key: str, i: int) -> str:
    return f"{key}__{i}"


def _written_out(statement: sa.ClauseElement, lengths: Mapping[str, int]) -> sa.ClauseElement:
    """``statement`` with each ``IN`` list as one parameter per item (a
    literal list: its items as literals); an empty list is false (``NOT IN``:
    true), as SQLAlchemy renders it."""

    def replace(element: Any) -> Any:
        if not isinstance(element, BinaryExpression):
            return None
        bind = element.right
        if not isinstance(bind, BindParameter) or not bind.expanding:
            return None
        if element.operator not in (operators.in_op, operators.not_in_op):
            raise TypeError(f"an expanding parameter under {element.operator} cannot be prepared")
        negated = element.operator is operators.not_in_op
        if bind.required:
            items: list[Any] = [
                sa.bindparam(_item(bind.key, i), type_=bind.type) for i in range(lengths[bind.key])
            ]
        else:
            items = [sa.literal(v, type_=bind.type) for v in bind.effective_value or ()]
        if not items:
            return sa.true() if negated else sa.false()
        return element.left.not_in(items) if negated else element.left.in_(items)

    written = visitors.replacement_traverse(statement, {}, replace)  # type: ignore[call-overload]
    assert isinstance(written, sa.ClauseElement)
    return written


class _Plan:
    """A statement compiled for one dialect (and, for an insert given its
    columns per call, one set of columns)."""

    __slots__ = ("binds", "columns", "dialect", "results", "row", "sql")

    def __init__(self, statement: sa.ClauseElement, dialect: Dialect, keys: Sequence[str] | None):
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        assert isinstance(compiled, SQLCompiler)
        if not compiled.positional or compiled.positiontup is None:
            raise TypeError(f"{dialect.name} compiles to named parameters; not supported")
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise TypeError("a statement with Python-side column defaults cannot be prepared")
        unconsumed = [k for k in keys or () if k not in compiled.binds]
        if unconsumed:  # as Connection.execute refuses them
            raise sa.exc.CompileError(f"Unconsumed column names: {', '.join(unconsumed)}")
        self.sql = compiled.string
        self.dialect = dialect
        # (the call's key, its processor, the value the statement itself holds:
        # a literal such as ``status == "active"`` is an anonymous bind)
        self.binds: list[tuple[str, Processor | None, Any]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if bind.expanding:
                raise TypeError(f"expanding parameter {name!r} cannot be prepared")
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            own = _NONE if bind.required else bind.effective_value
            self.binds.append((bind.key, process, own))
        self.columns = list(getattr(statement, "exported_columns", ()))
        self.row = _row_class([str(c.key) for c in self.columns]) if self.columns else None
        # The result processors, once the first execution's cursor described its columns.
        self.results: list[tuple[int, Processor]] | None = None

    def processors(self, description: Sequence[Any]) -> list[tuple[int, Processor]]:
        out = []
        for i, column in enumerate(self.columns):
            impl = column.type.dialect_impl(self.dialect)
            process = impl.result_processor(self.dialect, description[i][1])
            if process is not None:
                out.append((i, process))
        return out


class Prepared:
    """``Prepared(statement)(conn, params) -> Rows``: ``statement`` run on
    ``conn``'s DBAPI connection, in its transaction."""

    __slots__ = ("_lock", "_plans", "expanding", "lists", "per_call_columns", "statement")

    def __init__(self, statement: sa.ClauseElement, *, per_call_columns: bool = False) -> None:
        self.statement = statement
        self.lists, self.expanding = _lists(statement)
        # An insert whose columns are the keys of each call's parameters.
        self.per_call_columns = per_call_columns
        self._plans: dict[Any, _Plan] = {}
        self._lock = threading.Lock()

    def _plan(self, dialect: Dialect, params: Mapping[str, Any]) -> _Plan:
        columns = tuple(params) if self.per_call_columns else None
        lengths = tuple(len(params[k]) for k in self.expanding)
        key = (dialect.name, columns, lengths)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    statement = self.statement
                    if self.lists:
                        statement = _written_out(
                            statement, dict(zip(self.expanding, lengths, strict=True))
                        )
                    plan = self._plans[key] = _Plan(statement, dialect, columns)
        return plan

    def __call__(self, conn: sa.Connection, params: Mapping[str, Any] | None = None) -> Rows:
        params = params or {}
        if self.expanding:
            params = dict(params)
            for key in self.expanding:
                params.update((_item(key, i), v) for i, v in enumerate(params[key]))
        plan = self._plan(conn.dialect, params)
        rows, description, rowcount = _execute(conn, plan.sql, _args(plan, params))
        if plan.row is None:
            return Rows([], rowcount)
        if plan.results is None:
            plan.results = plan.processors(description)
        make = plan.row._make  # type: ignore[attr-defined]
        if plan.results:
            out = []
            for raw in rows:
                values = list(raw)
                for i, process in plan.results:
                    value = values[i]
                    if value is not None:  # NULL is None whatever the type (~half the columns)
                        values[i] = process(value)
                out.append(make(values))
        else:
            out = [make(raw) for raw in rows]
        return Rows(out, rowcount)

    def explain(
        self, conn: sa.Connection, params: Mapping[str, Any], *, analyze: bool = False
    ) -> list[str]:
        """The plan of the statement as ``__call__`` would run it with
        ``params`` (``EXPLAIN``, SQLite's ``EXPLAIN QUERY PLAN``: its detail
        column), without running it: what tests read. ``analyze``
        (PostgreSQL): run it, and each step says how many rows it gave."""
        assert not self.expanding, "a plan of an expanded list: not needed yet"
        plan = self._plan(conn.dialect, params)
        if conn.dialect.name == "sqlite":
            assert not analyze, "SQLite has no EXPLAIN ANALYZE"
            prefix = "EXPLAIN QUERY PLAN "
        else:
            prefix = "EXPLAIN ANALYZE " if analyze else "EXPLAIN "
        rows, _, _ = _execute(conn, prefix + plan.sql, _args(plan, params))
        return [str(row[-1]) for row in rows]


def _args(plan: _Plan, params: Mapping[str, Any]) -> list[Any]:
    """The driver's positional arguments of ``plan`` for ``params``."""
    args = []
    for name, process, own in plan.binds:
        value = params[name] if own is _NONE else params.get(name, own)
        args.append(value if process is None else process(value))
    return args


def driver(conn: sa.Connection, sql: str, params: Sequence[Any] = ()) -> Rows:
    """``sql`` (in the dialect's own parameter style) run on ``conn``'s DBAPI
    connection with positional ``params``; rows as the driver returns them.
    For statements whose text the store writes itself (the event log's)."""
    rows, _, rowcount = _execute(conn, sql, params)
    return Rows(list(rows), rowcount)


def _execute(conn: sa.Connection, sql: str, params: Sequence[Any]) -> tuple[Any, Any, int]:
    """``sql`` on a cursor of ``conn``'s DBAPI connection: its rows (none for
    a statement that returns none), their description and the rowcount;
    driver errors raised as SQLAlchemy's, as ``Connection.execute`` raises them."""
    dialect = conn.dialect
    error = dialect.loaded_dbapi.Error
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        try:
            cursor.execute(sql, params)
            rows = cursor.fetchall() if cursor.description is not None else []
        except error as exc:
            raise sa.exc.DBAPIError.instance(sql, params, exc, error, dialect=dialect) from exc
        return rows, cursor.description, cursor.rowcount
    finally:
        cursor.close()


@contextlib.contextmanager
def savepoint(conn: sa.Connection, name: str) -> Iterator[None]:
    """A savepoint around the block, as plain driver SQL: an exception rolls
    the block back alone (and goes on), else it is released.
    ``conn.begin_nested()`` compiled a clause for each SAVEPOINT and RELEASE
    (~40 us a pair against ~3; ~3 % of the server's CPU in the throughput
    bench, issue #18). SQLAlchemy does not see it: no SQLAlchemy savepoint may
    be left open across its end. On SQLite, a failure that ended the whole
    transaction (SQLite rolls back itself on some) leaves nothing to roll back to."""
    _execute(conn, f"SAVEPOINT {name}", ())
    try:
        yield
    except BaseException:
        if conn.dialect.name != "sqlite" or sqlite_in_transaction(conn):
            _execute(conn, f"ROLLBACK TO SAVEPOINT {name}", ())
            _execute(conn, f"RELEASE SAVEPOINT {name}", ())
        raise
    _execute(conn, f"RELEASE SAVEPOINT {name}", ())


def sqlite_in_transaction(conn: sa.Connection) -> bool:
    """Whether SQLite still holds ``conn``'s transaction (it ends one itself
    on some failures)."""
    return bool(conn.connection.dbapi_connection.in_transaction)  # type: ignore[union-attr]
