"""When and how the teacher labels: the ``schedule`` section (segments), ``masking`` (which patches
the teacher sees, with its ``budget``) and ``labels`` (the soft-label store)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, PrivateAttr, field_validator, model_validator

from maskedkd import DEFAULT_LADDER, FORWARD_POLICIES, Budget, needs_saliency, policy_names
from pipeline.config.validation import FieldProblems, Section, did_you_mean, local_or_uri, word_or_count


class ScheduleConfig(Section):
    """Epochs, and the milestones where the student is checkpointed and masks are recomputed."""

    epochs: int = Field(ge=1, description="Student training epochs.")
    milestones: list[int] | None = Field(
        None, description="Epochs starting a segment: strictly increasing, first 0, all < epochs. Default [0]."
    )
    every: int | None = Field(None, ge=1, description="Shorthand for milestones 0, every, 2*every, ... (< epochs).")
    lag: Literal[0, 1] = Field(
        0, description="1: labels of segment i+1 come from checkpoint i, so precompute overlaps training."
    )

    @model_validator(mode="after")
    def _check(self) -> "ScheduleConfig":
        if self.every is not None and self.milestones is not None:
            raise FieldProblems(("every", "give milestones or every, not both"))
        if self.every is not None:
            self.milestones, self.every = list(range(0, self.epochs, self.every)), None
        elif self.milestones is None:
            self.milestones = [0]
        m = self.milestones
        if not m:
            raise FieldProblems(("milestones", "must list at least epoch 0"))
        if m[0] != 0:
            raise FieldProblems(("milestones", f"must start at 0, got {m}"))
        bad = next((i for i in range(1, len(m)) if m[i] <= m[i - 1]), None)
        if bad is not None:
            raise FieldProblems((f"milestones[{bad}]", f"must be strictly increasing, got {m}"))
        if m[-1] >= self.epochs:
            raise FieldProblems(("milestones", f"must all be < epochs ({self.epochs}), got {m}"))
        if self.lag == 1 and len(m) < 2:
            raise FieldProblems(("lag", f"lag 1 needs at least 2 milestones, got {m}"))
        return self

    def segments(self) -> list[tuple[int, int]]:
        """``[(start_epoch, end_epoch), ...]`` one per milestone; end is exclusive."""
        m = list(self.milestones or [0])
        return list(zip(m, m[1:] + [self.epochs]))


class BudgetConfig(Section):
    """How much a mask may cost the teacher, measured on a spot-check of the segment's views:
    exactly one of a minimum top-1 agreement with the unmasked teacher or a maximum mean KL."""

    agreement: float | None = Field(None, ge=0, le=1, description="Masked top-1 equals the unmasked teacher's on at least this share of views.")
    kl: float | None = Field(None, ge=0, description="Mean KL(unmasked || masked) at most this many nats.")

    @model_validator(mode="after")
    def _one(self) -> "BudgetConfig":
        if (self.agreement is None) == (self.kl is None):
            raise FieldProblems(("", "give exactly one of agreement or kl"))
        return self

    def budget(self) -> Budget:
        """The :class:`maskedkd.Budget` this section describes."""
        return Budget(agreement=self.agreement, kl=self.kl)


class MaskingConfig(Section):
    """Which patches the teacher sees: a policy and how many patches to keep."""

    policy: str = Field("student", description=(
        "A masking policy: student, student_inverse, random, none (keep sets), lowres (the whole view at the keep's "
        "patch count), tome (tokens merged inside the teacher at the keep's MACs); or auto: with keep: auto, the candidate of `policies` whose chosen keep costs the fewest net MACs."))
    policies: list[str] | None = Field(None, min_length=1, description=(
        "With policy: auto, the candidates the spot-check measures (each one costs a ladder of teacher forwards). "
        "Default: student, random and every forward policy (lowres, tome)."))
    keep: Union[Annotated[int, Field(ge=1)], Literal["auto"], None] = Field(
        None, description="Patches the teacher keeps (98 of 196 = MaskedKD 50%), or 'auto': per milestone, the smallest "
                          "rung of the ladder within the budget, measured on a spot-check of the segment's views.")
    ratio: float | None = Field(None, gt=0, le=1, description="Fraction of patches kept: keep = round(ratio * patches).")
    per_milestone: list[int] | None = Field(None, description="One keep per milestone (a curriculum); instead of keep/ratio.")
    budget: BudgetConfig | None = Field(None, description="With keep: auto, what a mask may cost (agreement or kl).")
    ladder: list[float] = Field(list(DEFAULT_LADDER), min_length=1,
                                description="With keep: auto, the fractions of patches tried (round(f * patches)).")
    probe_samples: int = Field(512, ge=1, description="With keep: auto, views in the seeded spot-check (across shards).")
    tolerance: int = Field(0, ge=0, description="Reuse stored labels whose keep set differs in at most this many patches.")
    spot_check: int = Field(64, ge=0, description="Reused rows per partition recomputed to report the KL of reuse.")
    saliency_scale: float = Field(1.0, gt=0, le=1, description=(
        "The student's saliency pass on its view downscaled by this much (e.g. 0.5: a quarter of the tokens, "
        "position embedding resampled), scores resampled onto the teacher's patch grid: a cheaper pass, other masks."))

    _num_patches: int | None = PrivateAttr(None)

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        known = [*policy_names(), "auto"]
        if v not in known:
            raise ValueError(f"unknown masking policy {v!r}{did_you_mean(v, set(known))}; known: {', '.join(known)}")
        return v

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[str] | None) -> list[str] | None:
        for i, name in enumerate(v or []):
            if name not in policy_names() or name == "none":
                known = [p for p in policy_names() if p != "none"]
                raise ValueError(f"item {i}: {name!r} is not a candidate policy{did_you_mean(name, set(known))}; "
                                 f"known: {', '.join(known)}")
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"has duplicates: {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "MaskingConfig":
        given = [f for f in ("keep", "ratio", "per_milestone") if getattr(self, f) is not None]
        if len(given) > 1:
            raise FieldProblems((given[1], f"give one of keep, ratio or per_milestone, got {' and '.join(given)}"))
        if not given and self.policy != "none":
            raise FieldProblems(("keep", f"policy {self.policy!r} needs keep (patches), ratio or per_milestone"))
        if self.policies is not None and self.policy != "auto":
            raise FieldProblems(("policies", "only used with policy: auto"))
        if self.policy == "auto" and self.keep != "auto":
            raise FieldProblems(("policy", "auto chooses among policies by the budget rule of keep: auto; set keep: auto "
                                           "and a budget"))
        if self.keep == "auto":
            if self.policy == "none":
                raise FieldProblems(("keep", "auto chooses how many patches a policy keeps; policy 'none' keeps all of them"))
            if self.budget is None:
                raise FieldProblems(("budget", "keep: auto needs a budget: {agreement: 0.95} or {kl: <nats>}"))
        elif self.budget is not None:
            raise FieldProblems(("budget", "only used with keep: auto"))
        bad = [f for f in self.ladder if not 0 < f <= 1]
        if bad:
            raise FieldProblems(("ladder", f"fractions of the patches must be in (0, 1], got {bad[0]}"))
        return self

    @property
    def auto(self) -> bool:
        """Whether each milestone's keep is chosen by the fidelity spot-check."""
        return self.keep == "auto"

    def candidates(self) -> tuple[str, ...]:
        """The policies a milestone may label with: the one configured, or with ``policy: auto`` the
        ``policies`` (default: student, random and every registered forward policy)."""
        if self.policy != "auto":
            return (self.policy,)
        return tuple(self.policies or ("student", "random", *sorted(FORWARD_POLICIES)))

    @property
    def reads_saliency(self) -> bool:
        """Whether any candidate policy reads the student's saliency (the student must be maskable)."""
        return any(needs_saliency(p) for p in self.candidates())

    def keep_for_segment(self, i: int, num_patches: int | None = None) -> int | str:
        """Patches the teacher keeps in segment ``i`` (all of them for policy ``none``; ``"auto"``
        when the runner chooses it per milestone, see :mod:`pipeline.precompute.probe`).

        Args:
            i: segment index (0-based, one per milestone).
            num_patches: the teacher's patch count; defaults to the one found at load time.
        """
        n = num_patches if num_patches is not None else self._num_patches
        if n is None:
            raise ValueError("keep_for_segment needs num_patches (the config was not loaded with load_config)")
        if self.policy == "none":
            return n
        if self.per_milestone is not None:
            return self.per_milestone[i]
        if self.keep is not None:
            return self.keep
        return round(float(self.ratio) * n)  # type: ignore[arg-type]


class LabelsConfig(Section):
    """The soft-label store and what each row keeps."""

    store: str = Field("store", validate_default=True, description="Label store root: a folder (relative to the working directory) or a URI (s3://bucket/prefix; credentials and endpoint from the environment).")
    topk: Union[int, Literal["all"]] = Field(10, description="Classes kept per row (plus the exact tail bucket), or 'all'.")
    dtype: Literal["float16"] = Field("float16", description="Stored logit dtype; the store writes float16 only.")
    temperatures: list[float] = Field([1.0], min_length=1, description="Temperatures whose log-sum-exp is stored.")

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return str(local_or_uri(v))

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> Any:
        if v != "float16":
            raise ValueError(f"only float16 is supported (the store writes float16 logits), got {v!r}")
        return v

    @field_validator("topk", mode="plain")
    @classmethod
    def _topk(cls, v: Any) -> int | str:
        if word_or_count(v, "all"):
            return v
        raise ValueError(f"must be an integer >= 1 or 'all', got {v!r}")

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError(f"every temperature must be > 0, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates: {v}")
        return v
