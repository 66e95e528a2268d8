"""transports/twilio."""
