from credit_sidecar.pb.credits.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Period(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERIOD_UNSPECIFIED: _ClassVar[Period]
    PERIOD_MONTHLY: _ClassVar[Period]
    PERIOD_QUARTERLY: _ClassVar[Period]
    PERIOD_SEMIANNUAL: _ClassVar[Period]
    PERIOD_ANNUAL: _ClassVar[Period]

class DeliveryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATE_UNSPECIFIED: _ClassVar[DeliveryState]
    DELIVERY_STATE_PENDING: _ClassVar[DeliveryState]
    DELIVERY_STATE_DELIVERED: _ClassVar[DeliveryState]
    DELIVERY_STATE_FAILED: _ClassVar[DeliveryState]
PERIOD_UNSPECIFIED: Period
PERIOD_MONTHLY: Period
PERIOD_QUARTERLY: Period
PERIOD_SEMIANNUAL: Period
PERIOD_ANNUAL: Period
DELIVERY_STATE_UNSPECIFIED: DeliveryState
DELIVERY_STATE_PENDING: DeliveryState
DELIVERY_STATE_DELIVERED: DeliveryState
DELIVERY_STATE_FAILED: DeliveryState

class SetPlanRequest(_message.Message):
    __slots__ = ("account_id", "period", "anchor_unix_ms", "plan_credits", "addon_credits", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PLAN_CREDITS_FIELD_NUMBER: _ClassVar[int]
    ADDON_CREDITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    period: Period
    anchor_unix_ms: int
    plan_credits: int
    addon_credits: int
    request_id: str
    def __init__(self, account_id: _Optional[str] = ..., period: _Optional[_Union[Period, str]] = ..., anchor_unix_ms: _Optional[int] = ..., plan_credits: _Optional[int] = ..., addon_credits: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetPlanResponse(_message.Message):
    __slots__ = ("outcome", "cycle", "totals")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    cycle: _types_pb2.Cycle
    totals: _types_pb2.Totals
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., cycle: _Optional[_Union[_types_pb2.Cycle, _Mapping]] = ..., totals: _Optional[_Union[_types_pb2.Totals, _Mapping]] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("account_id", "kind", "amount", "expires_unix_ms", "request_id", "create_account")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    kind: _types_pb2.LotKind
    amount: int
    expires_unix_ms: int
    request_id: str
    create_account: bool
    def __init__(self, account_id: _Optional[str] = ..., kind: _Optional[_Union[_types_pb2.LotKind, str]] = ..., amount: _Optional[int] = ..., expires_unix_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., create_account: _Optional[bool] = ...) -> None: ...

class GrantResponse(_message.Message):
    __slots__ = ("outcome", "lot_id", "expires_unix_ms", "totals")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    lot_id: int
    expires_unix_ms: int
    totals: _types_pb2.Totals
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., lot_id: _Optional[int] = ..., expires_unix_ms: _Optional[int] = ..., totals: _Optional[_Union[_types_pb2.Totals, _Mapping]] = ...) -> None: ...

class StartTrialRequest(_message.Message):
    __slots__ = ("account_id", "credits", "duration_ms", "request_id", "create_account")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    credits: int
    duration_ms: int
    request_id: str
    create_account: bool
    def __init__(self, account_id: _Optional[str] = ..., credits: _Optional[int] = ..., duration_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., create_account: _Optional[bool] = ...) -> None: ...

class StartTrialResponse(_message.Message):
    __slots__ = ("outcome", "lot_id", "expires_unix_ms", "totals", "decline")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    lot_id: int
    expires_unix_ms: int
    totals: _types_pb2.Totals
    decline: _types_pb2.Decline
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., lot_id: _Optional[int] = ..., expires_unix_ms: _Optional[int] = ..., totals: _Optional[_Union[_types_pb2.Totals, _Mapping]] = ..., decline: _Optional[_Union[_types_pb2.Decline, _Mapping]] = ...) -> None: ...

class SetUserLimitRequest(_message.Message):
    __slots__ = ("account_id", "user_id", "limit", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    limit: int
    request_id: str
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., limit: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetUserLimitResponse(_message.Message):
    __slots__ = ("outcome", "limit", "used", "remaining")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    limit: int
    used: int
    remaining: int
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., limit: _Optional[int] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class SetCategoryBudgetRequest(_message.Message):
    __slots__ = ("account_id", "category", "budget", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    category: str
    budget: int
    request_id: str
    def __init__(self, account_id: _Optional[str] = ..., category: _Optional[str] = ..., budget: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetCategoryBudgetResponse(_message.Message):
    __slots__ = ("outcome", "budget", "used", "remaining")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    outcome: _types_pb2.Outcome
    budget: int
    used: int
    remaining: int
    def __init__(self, outcome: _Optional[_Union[_types_pb2.Outcome, str]] = ..., budget: _Optional[int] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("period", "anchor_unix_ms", "plan_credits", "addon_credits")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PLAN_CREDITS_FIELD_NUMBER: _ClassVar[int]
    ADDON_CREDITS_FIELD_NUMBER: _ClassVar[int]
    period: Period
    anchor_unix_ms: int
    plan_credits: int
    addon_credits: int
    def __init__(self, period: _Optional[_Union[Period, str]] = ..., anchor_unix_ms: _Optional[int] = ..., plan_credits: _Optional[int] = ..., addon_credits: _Optional[int] = ...) -> None: ...

class UserLimit(_message.Message):
    __slots__ = ("user_id", "limit", "used", "remaining")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    used: int
    remaining: int
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class CategoryBudget(_message.Message):
    __slots__ = ("category", "budget", "used", "remaining")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    category: str
    budget: int
    used: int
    remaining: int
    def __init__(self, category: _Optional[str] = ..., budget: _Optional[int] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ("account_id", "plan", "cycle", "totals", "lots", "trial_used", "user_limits", "open_reservations", "category_budgets")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    TRIAL_USED_FIELD_NUMBER: _ClassVar[int]
    USER_LIMITS_FIELD_NUMBER: _ClassVar[int]
    OPEN_RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_BUDGETS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    plan: Plan
    cycle: _types_pb2.Cycle
    totals: _types_pb2.Totals
    lots: _containers.RepeatedCompositeFieldContainer[_types_pb2.Lot]
    trial_used: bool
    user_limits: _containers.RepeatedCompositeFieldContainer[UserLimit]
    open_reservations: int
    category_budgets: _containers.RepeatedCompositeFieldContainer[CategoryBudget]
    def __init__(self, account_id: _Optional[str] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., cycle: _Optional[_Union[_types_pb2.Cycle, _Mapping]] = ..., totals: _Optional[_Union[_types_pb2.Totals, _Mapping]] = ..., lots: _Optional[_Iterable[_Union[_types_pb2.Lot, _Mapping]]] = ..., trial_used: _Optional[bool] = ..., user_limits: _Optional[_Iterable[_Union[UserLimit, _Mapping]]] = ..., open_reservations: _Optional[int] = ..., category_budgets: _Optional[_Iterable[_Union[CategoryBudget, _Mapping]]] = ...) -> None: ...

class ListReservationsRequest(_message.Message):
    __slots__ = ("account_id", "state", "page_size", "page_token", "settled")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    state: _types_pb2.ReservationState
    page_size: int
    page_token: str
    settled: bool
    def __init__(self, account_id: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.ReservationState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., settled: _Optional[bool] = ...) -> None: ...

class ListReservationsResponse(_message.Message):
    __slots__ = ("reservations", "next_page_token")
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Reservation]
    next_page_token: str
    def __init__(self, reservations: _Optional[_Iterable[_Union[_types_pb2.Reservation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("account_id", "cycle_start_unix_ms", "reservation_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CYCLE_START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    cycle_start_unix_ms: int
    reservation_id: str
    def __init__(self, account_id: _Optional[str] = ..., cycle_start_unix_ms: _Optional[int] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class UsageTotal(_message.Message):
    __slots__ = ("cycle_start_unix_ms", "user_id", "category", "spent", "commits")
    CYCLE_START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    cycle_start_unix_ms: int
    user_id: str
    category: str
    spent: int
    commits: int
    def __init__(self, cycle_start_unix_ms: _Optional[int] = ..., user_id: _Optional[str] = ..., category: _Optional[str] = ..., spent: _Optional[int] = ..., commits: _Optional[int] = ...) -> None: ...

class LineItem(_message.Message):
    __slots__ = ("at_unix_ms", "amount", "business_key", "already_charged", "labels", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_KEY_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CHARGED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    at_unix_ms: int
    amount: int
    business_key: str
    already_charged: bool
    labels: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, at_unix_ms: _Optional[int] = ..., amount: _Optional[int] = ..., business_key: _Optional[str] = ..., already_charged: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("totals", "spent", "spent_by_category", "spent_by_user", "line_items", "budget_by_category")
    class SpentByCategoryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SpentByUserEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class BudgetByCategoryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    SPENT_BY_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SPENT_BY_USER_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BY_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    totals: _containers.RepeatedCompositeFieldContainer[UsageTotal]
    spent: int
    spent_by_category: _containers.ScalarMap[str, int]
    spent_by_user: _containers.ScalarMap[str, int]
    line_items: _containers.RepeatedCompositeFieldContainer[LineItem]
    budget_by_category: _containers.ScalarMap[str, int]
    def __init__(self, totals: _Optional[_Iterable[_Union[UsageTotal, _Mapping]]] = ..., spent: _Optional[int] = ..., spent_by_category: _Optional[_Mapping[str, int]] = ..., spent_by_user: _Optional[_Mapping[str, int]] = ..., line_items: _Optional[_Iterable[_Union[LineItem, _Mapping]]] = ..., budget_by_category: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetAccountHistoryRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class LotAmount(_message.Message):
    __slots__ = ("lot_id", "amount")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    lot_id: int
    amount: int
    def __init__(self, lot_id: _Optional[int] = ..., amount: _Optional[int] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("seq", "at_unix_ms", "request_id", "plan_set", "cycle_started", "lot_granted", "lot_expired", "user_limit_set", "reserved", "extended", "committed", "closed", "category_budget_set", "overdrawn", "repaid")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_SET_FIELD_NUMBER: _ClassVar[int]
    CYCLE_STARTED_FIELD_NUMBER: _ClassVar[int]
    LOT_GRANTED_FIELD_NUMBER: _ClassVar[int]
    LOT_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    USER_LIMIT_SET_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    EXTENDED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_BUDGET_SET_FIELD_NUMBER: _ClassVar[int]
    OVERDRAWN_FIELD_NUMBER: _ClassVar[int]
    REPAID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at_unix_ms: int
    request_id: str
    plan_set: PlanChanged
    cycle_started: _types_pb2.Cycle
    lot_granted: LotGranted
    lot_expired: LotExpired
    user_limit_set: UserLimitChanged
    reserved: HoldPlaced
    extended: HoldExtended
    committed: CommitMade
    closed: HoldClosed
    category_budget_set: CategoryBudgetChanged
    overdrawn: Overdrawn
    repaid: LotRepaid
    def __init__(self, seq: _Optional[int] = ..., at_unix_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., plan_set: _Optional[_Union[PlanChanged, _Mapping]] = ..., cycle_started: _Optional[_Union[_types_pb2.Cycle, _Mapping]] = ..., lot_granted: _Optional[_Union[LotGranted, _Mapping]] = ..., lot_expired: _Optional[_Union[LotExpired, _Mapping]] = ..., user_limit_set: _Optional[_Union[UserLimitChanged, _Mapping]] = ..., reserved: _Optional[_Union[HoldPlaced, _Mapping]] = ..., extended: _Optional[_Union[HoldExtended, _Mapping]] = ..., committed: _Optional[_Union[CommitMade, _Mapping]] = ..., closed: _Optional[_Union[HoldClosed, _Mapping]] = ..., category_budget_set: _Optional[_Union[CategoryBudgetChanged, _Mapping]] = ..., overdrawn: _Optional[_Union[Overdrawn, _Mapping]] = ..., repaid: _Optional[_Union[LotRepaid, _Mapping]] = ...) -> None: ...

class Overdrawn(_message.Message):
    __slots__ = ("reservation_id", "user_id", "category", "cycle_start_unix_ms", "amount", "business_key", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CYCLE_START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    user_id: str
    category: str
    cycle_start_unix_ms: int
    amount: int
    business_key: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, reservation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., category: _Optional[str] = ..., cycle_start_unix_ms: _Optional[int] = ..., amount: _Optional[int] = ..., business_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LotRepaid(_message.Message):
    __slots__ = ("lot_id", "amount")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    lot_id: int
    amount: int
    def __init__(self, lot_id: _Optional[int] = ..., amount: _Optional[int] = ...) -> None: ...

class CategoryBudgetChanged(_message.Message):
    __slots__ = ("category", "budget")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    category: str
    budget: int
    def __init__(self, category: _Optional[str] = ..., budget: _Optional[int] = ...) -> None: ...

class PlanChanged(_message.Message):
    __slots__ = ("plan", "cycle")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    cycle: _types_pb2.Cycle
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., cycle: _Optional[_Union[_types_pb2.Cycle, _Mapping]] = ...) -> None: ...

class LotGranted(_message.Message):
    __slots__ = ("lot_id", "kind", "amount", "expires_unix_ms", "from_plan")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FROM_PLAN_FIELD_NUMBER: _ClassVar[int]
    lot_id: int
    kind: _types_pb2.LotKind
    amount: int
    expires_unix_ms: int
    from_plan: bool
    def __init__(self, lot_id: _Optional[int] = ..., kind: _Optional[_Union[_types_pb2.LotKind, str]] = ..., amount: _Optional[int] = ..., expires_unix_ms: _Optional[int] = ..., from_plan: _Optional[bool] = ...) -> None: ...

class LotExpired(_message.Message):
    __slots__ = ("lot_id", "amount")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    lot_id: int
    amount: int
    def __init__(self, lot_id: _Optional[int] = ..., amount: _Optional[int] = ...) -> None: ...

class UserLimitChanged(_message.Message):
    __slots__ = ("user_id", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class HoldPlaced(_message.Message):
    __slots__ = ("reservation_id", "user_id", "category", "amount", "lots", "deadline_unix_ms", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    user_id: str
    category: str
    amount: int
    lots: _containers.RepeatedCompositeFieldContainer[LotAmount]
    deadline_unix_ms: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, reservation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., category: _Optional[str] = ..., amount: _Optional[int] = ..., lots: _Optional[_Iterable[_Union[LotAmount, _Mapping]]] = ..., deadline_unix_ms: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HoldExtended(_message.Message):
    __slots__ = ("reservation_id", "amount", "lots", "deadline_unix_ms")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    amount: int
    lots: _containers.RepeatedCompositeFieldContainer[LotAmount]
    deadline_unix_ms: int
    def __init__(self, reservation_id: _Optional[str] = ..., amount: _Optional[int] = ..., lots: _Optional[_Iterable[_Union[LotAmount, _Mapping]]] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class CommitMade(_message.Message):
    __slots__ = ("reservation_id", "user_id", "category", "cycle_start_unix_ms", "amount", "lots", "business_key", "already_charged", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CYCLE_START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_KEY_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CHARGED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    user_id: str
    category: str
    cycle_start_unix_ms: int
    amount: int
    lots: _containers.RepeatedCompositeFieldContainer[LotAmount]
    business_key: str
    already_charged: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, reservation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., category: _Optional[str] = ..., cycle_start_unix_ms: _Optional[int] = ..., amount: _Optional[int] = ..., lots: _Optional[_Iterable[_Union[LotAmount, _Mapping]]] = ..., business_key: _Optional[str] = ..., already_charged: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HoldClosed(_message.Message):
    __slots__ = ("reservation_id", "state", "returned", "expired")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    state: _types_pb2.ReservationState
    returned: _containers.RepeatedCompositeFieldContainer[LotAmount]
    expired: int
    def __init__(self, reservation_id: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.ReservationState, str]] = ..., returned: _Optional[_Iterable[_Union[LotAmount, _Mapping]]] = ..., expired: _Optional[int] = ...) -> None: ...

class GetAccountHistoryResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchAccountRequest(_message.Message):
    __slots__ = ("account_id", "interval_ms")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    interval_ms: int
    def __init__(self, account_id: _Optional[str] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class WatchAccountResponse(_message.Message):
    __slots__ = ("at_unix_ms", "account", "alerts")
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    at_unix_ms: int
    account: GetAccountResponse
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, at_unix_ms: _Optional[int] = ..., account: _Optional[_Union[GetAccountResponse, _Mapping]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class AlertThreshold(_message.Message):
    __slots__ = ("threshold_id", "used_percent", "available_below", "depleted", "user_percent", "category_percent")
    THRESHOLD_ID_FIELD_NUMBER: _ClassVar[int]
    USED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BELOW_FIELD_NUMBER: _ClassVar[int]
    DEPLETED_FIELD_NUMBER: _ClassVar[int]
    USER_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    threshold_id: str
    used_percent: int
    available_below: int
    depleted: bool
    user_percent: ScopedPercent
    category_percent: ScopedPercent
    def __init__(self, threshold_id: _Optional[str] = ..., used_percent: _Optional[int] = ..., available_below: _Optional[int] = ..., depleted: _Optional[bool] = ..., user_percent: _Optional[_Union[ScopedPercent, _Mapping]] = ..., category_percent: _Optional[_Union[ScopedPercent, _Mapping]] = ...) -> None: ...

class ScopedPercent(_message.Message):
    __slots__ = ("id", "percent")
    ID_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    percent: int
    def __init__(self, id: _Optional[str] = ..., percent: _Optional[int] = ...) -> None: ...

class SetAlertThresholdsRequest(_message.Message):
    __slots__ = ("account_id", "thresholds")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    thresholds: _containers.RepeatedCompositeFieldContainer[AlertThreshold]
    def __init__(self, account_id: _Optional[str] = ..., thresholds: _Optional[_Iterable[_Union[AlertThreshold, _Mapping]]] = ...) -> None: ...

class SetAlertThresholdsResponse(_message.Message):
    __slots__ = ("thresholds",)
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    thresholds: _containers.RepeatedCompositeFieldContainer[AlertThreshold]
    def __init__(self, thresholds: _Optional[_Iterable[_Union[AlertThreshold, _Mapping]]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("event_id", "account_id", "threshold", "cycle_start_unix_ms", "fired_unix_ms", "observed", "base", "deliveries")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CYCLE_START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FIRED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    account_id: str
    threshold: AlertThreshold
    cycle_start_unix_ms: int
    fired_unix_ms: int
    observed: int
    base: int
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    def __init__(self, event_id: _Optional[str] = ..., account_id: _Optional[str] = ..., threshold: _Optional[_Union[AlertThreshold, _Mapping]] = ..., cycle_start_unix_ms: _Optional[int] = ..., fired_unix_ms: _Optional[int] = ..., observed: _Optional[int] = ..., base: _Optional[int] = ..., deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("url", "state", "attempts", "last_error", "next_attempt_unix_ms", "delivered_unix_ms")
    URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    url: str
    state: DeliveryState
    attempts: int
    last_error: str
    next_attempt_unix_ms: int
    delivered_unix_ms: int
    def __init__(self, url: _Optional[str] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., next_attempt_unix_ms: _Optional[int] = ..., delivered_unix_ms: _Optional[int] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("thresholds", "alerts", "next_page_token")
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    thresholds: _containers.RepeatedCompositeFieldContainer[AlertThreshold]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    next_page_token: str
    def __init__(self, thresholds: _Optional[_Iterable[_Union[AlertThreshold, _Mapping]]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
