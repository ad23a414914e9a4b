from credit_sidecar.pb.credits.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReserveRequest(_message.Message):
    __slots__ = ("account_id", "user_id", "category", "cost", "ttl_ms", "request_id", "labels", "min_quantity")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MIN_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    category: str
    cost: _types_pb2.Cost
    ttl_ms: int
    request_id: str
    labels: _containers.ScalarMap[str, str]
    min_quantity: int
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., category: _Optional[str] = ..., cost: _Optional[_Union[_types_pb2.Cost, _Mapping]] = ..., ttl_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., min_quantity: _Optional[int] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("outcome", "reservation_id", "amount", "deadline_unix_ms", "available", "decline", "quantity")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    reservation_id: str
    amount: int
    deadline_unix_ms: int
    available: int
    decline: _types_pb2.Decline
    quantity: int
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., reservation_id: _Optional[str] = ..., amount: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., available: _Optional[int] = ..., decline: _Optional[_Union[_types_pb2.Decline, _Mapping]] = ..., quantity: _Optional[int] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("reservation_id", "cost", "final", "request_id", "business_key", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    cost: _types_pb2.Cost
    final: bool
    request_id: str
    business_key: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, reservation_id: _Optional[str] = ..., cost: _Optional[_Union[_types_pb2.Cost, _Mapping]] = ..., final: _Optional[bool] = ..., request_id: _Optional[str] = ..., business_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("outcome", "charged", "already_charged", "held", "returned", "reservation", "decline")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CHARGED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    charged: int
    already_charged: bool
    held: int
    returned: int
    reservation: _types_pb2.Reservation
    decline: _types_pb2.Decline
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., charged: _Optional[int] = ..., already_charged: _Optional[bool] = ..., held: _Optional[int] = ..., returned: _Optional[int] = ..., reservation: _Optional[_Union[_types_pb2.Reservation, _Mapping]] = ..., decline: _Optional[_Union[_types_pb2.Decline, _Mapping]] = ...) -> None: ...

class CommitBatchRequest(_message.Message):
    __slots__ = ("reservation_id", "items")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    items: _containers.RepeatedCompositeFieldContainer[CommitItem]
    def __init__(self, reservation_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[CommitItem, _Mapping]]] = ...) -> None: ...

class CommitItem(_message.Message):
    __slots__ = ("item_id", "cost", "business_key", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    cost: _types_pb2.Cost
    business_key: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, item_id: _Optional[str] = ..., cost: _Optional[_Union[_types_pb2.Cost, _Mapping]] = ..., business_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CommitBatchResponse(_message.Message):
    __slots__ = ("items", "charged", "reservation")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CommitItemResult]
    charged: int
    reservation: _types_pb2.Reservation
    def __init__(self, items: _Optional[_Iterable[_Union[CommitItemResult, _Mapping]]] = ..., charged: _Optional[int] = ..., reservation: _Optional[_Union[_types_pb2.Reservation, _Mapping]] = ...) -> None: ...

class CommitItemResult(_message.Message):
    __slots__ = ("item_id", "outcome", "charged", "already_charged", "held", "decline")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CHARGED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    outcome: _types_pb2.Outcome
    charged: int
    already_charged: bool
    held: int
    decline: _types_pb2.Decline
    def __init__(self, item_id: _Optional[str] = ..., outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., charged: _Optional[int] = ..., already_charged: _Optional[bool] = ..., held: _Optional[int] = ..., decline: _Optional[_Union[_types_pb2.Decline, _Mapping]] = ...) -> None: ...

class ExtendRequest(_message.Message):
    __slots__ = ("reservation_id", "cost", "ttl_ms", "request_id", "min_quantity")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    cost: _types_pb2.Cost
    ttl_ms: int
    request_id: str
    min_quantity: int
    def __init__(self, reservation_id: _Optional[str] = ..., cost: _Optional[_Union[_types_pb2.Cost, _Mapping]] = ..., ttl_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., min_quantity: _Optional[int] = ...) -> None: ...

class ExtendResponse(_message.Message):
    __slots__ = ("outcome", "added", "held", "deadline_unix_ms", "reservation", "decline", "added_quantity")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    ADDED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    added: int
    held: int
    deadline_unix_ms: int
    reservation: _types_pb2.Reservation
    decline: _types_pb2.Decline
    added_quantity: int
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., added: _Optional[int] = ..., held: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., reservation: _Optional[_Union[_types_pb2.Reservation, _Mapping]] = ..., decline: _Optional[_Union[_types_pb2.Decline, _Mapping]] = ..., added_quantity: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("reservation_id", "request_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    request_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("outcome", "returned", "reservation", "decline")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    returned: int
    reservation: _types_pb2.Reservation
    decline: _types_pb2.Decline
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., returned: _Optional[int] = ..., reservation: _Optional[_Union[_types_pb2.Reservation, _Mapping]] = ..., decline: _Optional[_Union[_types_pb2.Decline, _Mapping]] = ...) -> None: ...

class ChargeRequest(_message.Message):
    __slots__ = ("account_id", "user_id", "category", "cost", "request_id", "business_key", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    category: str
    cost: _types_pb2.Cost
    request_id: str
    business_key: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., category: _Optional[str] = ..., cost: _Optional[_Union[_types_pb2.Cost, _Mapping]] = ..., request_id: _Optional[str] = ..., business_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ChargeResponse(_message.Message):
    __slots__ = ("outcome", "reservation_id", "charged", "already_charged", "available", "decline")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CHARGED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    reservation_id: str
    charged: int
    already_charged: bool
    available: int
    decline: _types_pb2.Decline
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., reservation_id: _Optional[str] = ..., charged: _Optional[int] = ..., already_charged: _Optional[bool] = ..., available: _Optional[int] = ..., decline: _Optional[_Union[_types_pb2.Decline, _Mapping]] = ...) -> None: ...

class QuoteRequest(_message.Message):
    __slots__ = ("account_id", "user_id", "category", "cost")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    category: str
    cost: _types_pb2.Cost
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., category: _Optional[str] = ..., cost: _Optional[_Union[_types_pb2.Cost, _Mapping]] = ...) -> None: ...

class QuoteResponse(_message.Message):
    __slots__ = ("fits", "outcome", "amount", "available", "user_remaining", "units_that_fit", "category_remaining")
    FITS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    USER_REMAINING_FIELD_NUMBER: _ClassVar[int]
    UNITS_THAT_FIT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_REMAINING_FIELD_NUMBER: _ClassVar[int]
    fits: bool
    outcome: _types_pb2.Outcome
    amount: int
    available: int
    user_remaining: int
    units_that_fit: int
    category_remaining: int
    def __init__(self, fits: _Optional[bool] = ..., outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., amount: _Optional[int] = ..., available: _Optional[int] = ..., user_remaining: _Optional[int] = ..., units_that_fit: _Optional[int] = ..., category_remaining: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id", "user_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("totals", "cycle", "user_limit", "user_used", "user_remaining")
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    USER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    USER_USED_FIELD_NUMBER: _ClassVar[int]
    USER_REMAINING_FIELD_NUMBER: _ClassVar[int]
    totals: _types_pb2.Totals
    cycle: _types_pb2.Cycle
    user_limit: int
    user_used: int
    user_remaining: int
    def __init__(self, totals: _Optional[_Union[_types_pb2.Totals, _Mapping]] = ..., cycle: _Optional[_Union[_types_pb2.Cycle, _Mapping]] = ..., user_limit: _Optional[int] = ..., user_used: _Optional[int] = ..., user_remaining: _Optional[int] = ...) -> None: ...

class GetReservationRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class GetReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: _types_pb2.Reservation
    def __init__(self, reservation: _Optional[_Union[_types_pb2.Reservation, _Mapping]] = ...) -> None: ...
