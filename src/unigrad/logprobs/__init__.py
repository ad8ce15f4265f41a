"""Log-probs: the one room where models and tokens become the per-token fields a ``Batch`` reads.

``readout``       one body forward, the chunked LM-head read-out and its checkpoint rule (used by all below)
``token``         ``token_logprobs``, ``reference_logprobs``
``shared_prompt`` the shared-prompt forward (each distinct prompt once, its KV cache reused)
``best_other``    ``token_logprobs_with_top_other`` (``logp_top_other``, for the inverted hinge)
``support``       teacher support for distillation (``teacher_topk``, ``student_logprobs_at``, ``distill_fields``)
``sampled``       ``sampled_label_logprobs`` (labels drawn from the model: Sophia's Gauss–Newton–Bartlett curvature)
``values``        ``token_logprobs_and_values`` (a value head on the policy's trunk: PPO's shared critic)
``producers``     the ``LogProbProducer`` protocol, its producers and the table that picks one
"""
from unigrad.logprobs.best_other import TOP_OTHER_FIELDS, token_logprobs_with_top_other
from unigrad.logprobs.readout import Completions, body_and_head, chunked, completion_states, logit_transform, scatter
from unigrad.logprobs.producers import (
    PRODUCED_FIELDS, BestOtherToken, LogProbProducer, LogprobsAndValues, SampledLabels, TeacherSupport, TokenLogprobs, choose_producer,
)
from unigrad.logprobs.shared_prompt import shared_prompt_logprobs, shared_prompt_states, shares_prompts
from unigrad.logprobs.support import (
    DISTILL_FIELDS, distill_fields, student_logprobs_at, student_logprobs_full, support_logprobs, teacher_topk,
)
from unigrad.logprobs.sampled import sampled_label_logprobs
from unigrad.logprobs.token import reference_logprobs, token_logprobs
from unigrad.logprobs.values import token_logprobs_and_values, trunk_values

__all__ = [
    "BestOtherToken", "Completions", "LogprobsAndValues", "SampledLabels", "sampled_label_logprobs", "DISTILL_FIELDS", "LogProbProducer", "PRODUCED_FIELDS", "TOP_OTHER_FIELDS",
    "TeacherSupport", "TokenLogprobs", "body_and_head", "choose_producer", "chunked", "completion_states",
    "distill_fields", "logit_transform", "reference_logprobs", "scatter", "shared_prompt_logprobs",
    "shared_prompt_states", "shares_prompts", "student_logprobs_at", "student_logprobs_full", "support_logprobs",
    "teacher_topk", "token_logprobs", "token_logprobs_and_values", "token_logprobs_with_top_other", "trunk_values",
]
