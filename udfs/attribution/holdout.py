"""Holdout assignment: which users are kept from a campaign, or from every campaign.

Inputs: a user id, the campaign (or journey) id, the share to hold out and a salt. Outputs:
whether the user is held out, and the arm of a candidate (``treated``, ``holdout`` or
``control``). State: none - the answer is a pure function of its inputs, so every process,
restart and replay puts a user in the same arm.

How: ``blake2b`` of the salt, the scope (``campaign:<id>`` or the global control group) and the
user id, its first 8 bytes read as a number and divided by 2**64, gives the user a point in
[0, 1) per scope; the user is held out when the point is below the share. Python's ``hash()``
is not used: it is salted per process. Because the test is ``point < share``, raising a share
only adds users (everyone held out at 5% is still held out at 10%), and scopes get independent
points, so being held out of one campaign says nothing about another or about the control group.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

#: the arms of a touch: sent, held out of its campaign, or in the global control group
TREATED: Final = "treated"
HOLDOUT: Final = "holdout"
CONTROL: Final = "control"
ARMS: Final = (TREATED, HOLDOUT, CONTROL)
#: the salt of per-campaign holdouts; changing it reshuffles every campaign's holdout
HOLDOUT_SALT: Final = "nudgeflow-holdout-v1"
#: the salt of the global control group when the policy names none
CONTROL_SALT: Final = "nudgeflow-control-v1"
#: the scope of the global control group (campaign scopes are ``campaign:<id>``, never this)
CONTROL_SCOPE: Final = "control-group"
#: the largest share of users a holdout or the control group may take
MAX_SHARE: Final = 0.5


@dataclass(frozen=True)
class ControlGroup:
    """The global control group: users who get no campaign at all (the policy's).

    Attributes:
        share: The fraction of all users in it, in [0, ``MAX_SHARE``].
        salt: Mixed into the hash; a new salt draws a new group.
    """

    share: float
    salt: str = CONTROL_SALT


def assignment_point(salt: str, scope: str, user_id: str) -> float:
    """The user's point in [0, 1) for one scope: the same in every process and on every run.

    Args:
        salt: Mixed into the hash.
        scope: What is being assigned: ``campaign:<id>`` or ``CONTROL_SCOPE``.
        user_id: The user.

    Returns:
        The first 8 bytes of ``blake2b`` of the three (as a JSON list, so no separator inside
        one of them can make two different triples hash alike) divided by 2**64.
    """
    text = json.dumps([salt, scope, user_id], ensure_ascii=False)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_control_group(user_id: str, group: ControlGroup | float | None,
                     salt: str = CONTROL_SALT) -> bool:
    """Whether the user is in the global control group.

    Args:
        user_id: The user.
        group: The policy's ``ControlGroup`` (its salt wins over ``salt``), a share in [0, 1],
            or None (no control group: nobody is in it).
        salt: The salt when ``group`` is a bare share.
    """
    if group is None:
        return False
    if isinstance(group, ControlGroup):
        share, salt = group.share, group.salt
    else:
        share = group
    return share > 0 and assignment_point(salt, CONTROL_SCOPE, user_id) < share


def held_out(user_id: str, campaign_id: str, share: float, salt: str = HOLDOUT_SALT) -> bool:
    """Whether the user is in the holdout of a campaign (or journey: pass the journey's id).

    Args:
        user_id: The user.
        campaign_id: The campaign's id, or the journey's id for every send of a journey (so a
            user is in the same arm at each of its nodes; see ``attribution.attribution_unit``).
        share: The fraction held out, in [0, 1]; 0 holds out nobody.
        salt: Mixed into the hash.
    """
    return share > 0 and assignment_point(salt, f"campaign:{campaign_id}", user_id) < share


def assign_arm(user_id: str, unit: str, share: float, control: ControlGroup | None,
               salt: str = HOLDOUT_SALT) -> str:
    """The arm of a candidate of ``unit`` for this user: control, holdout or treated.

    The control group is asked first: its users get nothing from any campaign, and they are
    kept out of the campaigns' holdout arms (their conversions measure the whole programme,
    not one campaign - mixing them in would compare a campaign's treated users with users who
    got no other campaign either).

    Args:
        user_id: The user.
        unit: The campaign id, or the journey id for a journey's send.
        share: The unit's holdout share in [0, 1].
        control: The policy's control group, or None.
        salt: The salt of per-campaign holdouts.
    """
    if in_control_group(user_id, control):
        return CONTROL
    return HOLDOUT if held_out(user_id, unit, share, salt) else TREATED
