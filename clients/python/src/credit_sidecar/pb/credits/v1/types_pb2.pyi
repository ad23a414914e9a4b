from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_OK: _ClassVar[Outcome]
    OUTCOME_INSUFFICIENT_CREDIT: _ClassVar[Outcome]
    OUTCOME_USER_LIMIT_REACHED: _ClassVar[Outcome]
    OUTCOME_RESERVATION_EXPIRED: _ClassVar[Outcome]
    OUTCOME_RESERVATION_CLOSED: _ClassVar[Outcome]
    OUTCOME_EXCEEDS_HOLD: _ClassVar[Outcome]
    OUTCOME_TRIAL_ALREADY_USED: _ClassVar[Outcome]
    OUTCOME_CATEGORY_BUDGET_REACHED: _ClassVar[Outcome]
    OUTCOME_JOURNALED: _ClassVar[Outcome]

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_ACCOUNT: _ClassVar[Scope]
    SCOPE_USER: _ClassVar[Scope]
    SCOPE_RESERVATION: _ClassVar[Scope]
    SCOPE_CATEGORY: _ClassVar[Scope]

class ReservationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATE_UNSPECIFIED: _ClassVar[ReservationState]
    RESERVATION_STATE_HELD: _ClassVar[ReservationState]
    RESERVATION_STATE_COMMITTED: _ClassVar[ReservationState]
    RESERVATION_STATE_RELEASED: _ClassVar[ReservationState]
    RESERVATION_STATE_EXPIRED: _ClassVar[ReservationState]

class LotKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOT_KIND_UNSPECIFIED: _ClassVar[LotKind]
    LOT_KIND_PLAN: _ClassVar[LotKind]
    LOT_KIND_ADDON: _ClassVar[LotKind]
    LOT_KIND_TRIAL: _ClassVar[LotKind]
    LOT_KIND_PROMO: _ClassVar[LotKind]
    LOT_KIND_ADJUSTMENT: _ClassVar[LotKind]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_OK: Outcome
OUTCOME_INSUFFICIENT_CREDIT: Outcome
OUTCOME_USER_LIMIT_REACHED: Outcome
OUTCOME_RESERVATION_EXPIRED: Outcome
OUTCOME_RESERVATION_CLOSED: Outcome
OUTCOME_EXCEEDS_HOLD: Outcome
OUTCOME_TRIAL_ALREADY_USED: Outcome
OUTCOME_CATEGORY_BUDGET_REACHED: Outcome
OUTCOME_JOURNALED: Outcome
SCOPE_UNSPECIFIED: Scope
SCOPE_ACCOUNT: Scope
SCOPE_USER: Scope
SCOPE_RESERVATION: Scope
SCOPE_CATEGORY: Scope
RESERVATION_STATE_UNSPECIFIED: ReservationState
RESERVATION_STATE_HELD: ReservationState
RESERVATION_STATE_COMMITTED: ReservationState
RESERVATION_STATE_RELEASED: ReservationState
RESERVATION_STATE_EXPIRED: ReservationState
LOT_KIND_UNSPECIFIED: LotKind
LOT_KIND_PLAN: LotKind
LOT_KIND_ADDON: LotKind
LOT_KIND_TRIAL: LotKind
LOT_KIND_PROMO: LotKind
LOT_KIND_ADJUSTMENT: LotKind

class Decline(_message.Message):
    __slots__ = ("scope", "requested", "available", "user_remaining", "held", "reservation_state", "message", "scope_id", "category_remaining")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    USER_REMAINING_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_REMAINING_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    requested: int
    available: int
    user_remaining: int
    held: int
    reservation_state: ReservationState
    message: str
    scope_id: str
    category_remaining: int
    def __init__(self, scope: _Optional[_Union[Scope, str]] = ..., requested: _Optional[int] = ..., available: _Optional[int] = ..., user_remaining: _Optional[int] = ..., held: _Optional[int] = ..., reservation_state: _Optional[_Union[ReservationState, str]] = ..., message: _Optional[str] = ..., scope_id: _Optional[str] = ..., category_remaining: _Optional[int] = ...) -> None: ...

class Cost(_message.Message):
    __slots__ = ("amount", "sku")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    amount: int
    sku: SkuQuantity
    def __init__(self, amount: _Optional[int] = ..., sku: _Optional[_Union[SkuQuantity, _Mapping]] = ...) -> None: ...

class SkuQuantity(_message.Message):
    __slots__ = ("sku", "quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "account_id", "user_id", "category", "state", "reserved", "committed", "held", "returned", "commit_count", "created_unix_ms", "deadline_unix_ms", "closed_unix_ms", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    COMMIT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    account_id: str
    user_id: str
    category: str
    state: ReservationState
    reserved: int
    committed: int
    held: int
    returned: int
    commit_count: int
    created_unix_ms: int
    deadline_unix_ms: int
    closed_unix_ms: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, reservation_id: _Optional[str] = ..., account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., category: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ..., reserved: _Optional[int] = ..., committed: _Optional[int] = ..., held: _Optional[int] = ..., returned: _Optional[int] = ..., commit_count: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., closed_unix_ms: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Lot(_message.Message):
    __slots__ = ("lot_id", "kind", "granted", "remaining", "granted_unix_ms", "expires_unix_ms")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    GRANTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    lot_id: int
    kind: LotKind
    granted: int
    remaining: int
    granted_unix_ms: int
    expires_unix_ms: int
    def __init__(self, lot_id: _Optional[int] = ..., kind: _Optional[_Union[LotKind, str]] = ..., granted: _Optional[int] = ..., remaining: _Optional[int] = ..., granted_unix_ms: _Optional[int] = ..., expires_unix_ms: _Optional[int] = ...) -> None: ...

class Totals(_message.Message):
    __slots__ = ("granted", "available", "held", "spent", "expired", "owed")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    OWED_FIELD_NUMBER: _ClassVar[int]
    granted: int
    available: int
    held: int
    spent: int
    expired: int
    owed: int
    def __init__(self, granted: _Optional[int] = ..., available: _Optional[int] = ..., held: _Optional[int] = ..., spent: _Optional[int] = ..., expired: _Optional[int] = ..., owed: _Optional[int] = ...) -> None: ...

class Cycle(_message.Message):
    __slots__ = ("start_unix_ms", "end_unix_ms")
    START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    start_unix_ms: int
    end_unix_ms: int
    def __init__(self, start_unix_ms: _Optional[int] = ..., end_unix_ms: _Optional[int] = ...) -> None: ...
