"""Delivery back ends: where an accepted message goes.

``MaildirDelivery`` writes into a local Maildir (catch-all sink, tests,
benchmarks); ``ForwardDelivery`` relays to the real MTA over SMTP without
spooling to disk, answering the client with the downstream's verdict.
"""

from smtpfw.delivery.forward import ForwardDelivery
from smtpfw.delivery.maildir import MaildirDelivery
from smtpfw.delivery.message import Delivery, DeliveryResult, Message

__all__ = [
    "Delivery",
    "DeliveryResult",
    "ForwardDelivery",
    "MaildirDelivery",
    "Message",
]
