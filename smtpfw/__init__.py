"""smtpfw: a declarative, rules-driven SMTP firewall."""

__version__ = "0.1.0"
