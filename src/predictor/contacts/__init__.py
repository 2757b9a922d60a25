"""Contacts: the contract of a contact, reading and validating exports, repeat labels, the contact store
and the simulator. The ground every later stage stands on."""
