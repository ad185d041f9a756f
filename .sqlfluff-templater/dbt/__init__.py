"""Stand-ins for dbt's cross-database macros, so sqlfluff's jinja templater can render the models."""


def type_string() -> str:
    return "varchar"


def type_timestamp() -> str:
    return "timestamp"


def type_bigint() -> str:
    return "bigint"


def type_int() -> str:
    return "integer"


def hash(expression: str) -> str:  # noqa: A001
    return f"md5({expression})"


def concat(parts: list[str]) -> str:
    return " || ".join(parts)
