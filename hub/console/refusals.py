"""What the console says when a form is refused, in the reader's language.

The Directory (``hub.directory``), the alerts' silences (``Mutes.add``) and the
uptime report's range each refuse with a code and an English message; the API
sends that message as it is (its readers are programs and their authors). A
maintenance worker reading Chinese gets, instead, the word of the code here,
said in terms of the form's boxes. A code not listed falls back to a general
word per source, never to the English message.
"""

from __future__ import annotations

from typing import Any

from hub.alerting.texts import N_
from hub.console import gettext
from hub.fleet import directory_fields as fields

__all__ = ["DIRECTORY_WORDS", "RANGE_WORDS", "SILENCE_WORDS", "TOKEN_WORDS", "USER_WORDS",
           "refusal"]

#: Codes of hub.fleet.directory and hub.fleet.directory_fields, as the people page's
#: forms meet them (messages name the box, never the value typed: a PIN or phone
#: number is not echoed).
DIRECTORY_WORDS: dict[str | None, str] = {
    "bad_id": N_("The staff id is 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a "
                 "letter or digit."),
    "bad_name": N_("The name is 1 to %(most)s characters, without control characters."),
    "bad_phone": N_("The phone number must be a mainland mobile number: 11 digits "
                    "starting 13 to 19, without +86 or spaces."),
    "bad_pin": N_("The PIN is 4 to 8 digits."),
    "bad_rider": N_("That is not a rider id (r: and 24 hex digits)."),
    "bad_groups": N_("Groups: at most %(most)s group names, separated by commas."),
    "bad_reason": N_("Give a reason of 1 to %(most)s characters."),
    "bad_date": N_("The expiry must be a date YYYY-MM-DD."),
    "bad_time": N_("The expiry must be in the future."),
    "bad_body": N_("Give the rider's phone number or rider id, and fill in the form."),
    "exists": N_("There is already a staff member with that id."),
    "not_found": N_("No such staff member or rider: it may have been removed already."),
    "no_fleet_key": N_("The hub has no fleet key (fleet_key_file in its configuration), so "
                       "it cannot turn a phone number into a rider id."),
    "directory_too_large": N_("Refused: the stations' Directory would be too large for one "
                              "message. Remove staff, riders or denied riders first."),
    None: N_("The Directory refused that change."),
}
#: The bounds the Directory's messages carry, for the words above that name them.
_BOUNDS = {"bad_name": fields.NAME_MAX, "bad_groups": fields.GROUPS_MAX,
           "bad_reason": fields.REASON_MAX}

#: Codes of hub.alerting.alerts.BadMute, as the alerts page's silence form meets them:
#: the form sends the alert's own station and rule, so only the duration and the
#: comment are typed.
SILENCE_WORDS: dict[str | None, str] = {
    "bad_time": N_("The duration must be like 30m, 2h or 1d12h, and at most 30 days."),
    "bad_comment": N_("The comment is at most %(most)s characters."),
    None: N_("The silence was refused."),
}

#: Codes of hub.console.uptime.BadRange (the uptime report, the deny form's expiry).
RANGE_WORDS: dict[str | None, str] = {
    "bad_date": N_("A date must be YYYY-MM-DD."),
    "backwards": N_("The first day must not be after the last."),
    "too_long": N_("A report covers at most %(most)s days."),
    "bad_group": N_("A group name is at most 64 characters."),
    None: N_("The dates were refused."),
}

#: Codes of hub.console.auth.UserError (the users page; admin).
USER_WORDS: dict[str | None, str] = {
    "bad_name": N_("A user name is 1 to %(longest)s of a-z, 0-9, '.', '_', '-'."),
    "bad_role": N_("Choose a role: maintenance, ops or admin."),
    "bad_groups": N_("A group name is 1 to 64 characters, without control characters."),
    "bad_password": N_("A password is %(least)s to %(most)s characters."),
    "needs_groups": N_("A maintenance user acts on the stations of their groups: give them "
                       "groups."),
    "exists": N_("There is already a user of that name."),
    "not_found": N_("No such user."),
    None: N_("The user was not changed."),
}

#: Codes of hub.http.stored_tokens.TokenRefused (the tokens page; admin).
TOKEN_WORDS: dict[str | None, str] = {
    "bad_name": N_("A token's name is 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-', starting with "
                   "a letter or digit."),
    "bad_scopes": N_("Choose at least one scope."),
    "configured": N_("The configuration has a token of that name."),
    "exists": N_("There is already a token of that name (a revoked token's name is not "
                 "given again)."),
    "not_found": N_("No such token to revoke."),
    None: N_("The token was refused."),
}


def refusal(err: Any, words: dict[str | None, str], most: int | None = None,
            **bounds: int) -> str:
    """The reader's words for ``err`` (anything with a ``code``) from the table
    ``words`` (its ``None`` entry for a code it does not list); ``most`` and
    ``bounds`` fill the bounds some words name (``most`` the Directory's own by
    default)."""
    code = getattr(err, "code", None)
    message = words.get(code) if isinstance(code, str) else None
    if message is None:
        return gettext(words[None])
    if most is None:
        most = _BOUNDS.get(code)
    text = gettext(message)
    return text % {"most": most, **bounds} if "%(" in message else text
