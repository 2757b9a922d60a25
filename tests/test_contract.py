"""One contact contract: every description of a contact is derived from ``predictor.contacts.contract``."""

from __future__ import annotations

from pathlib import Path

from predictor.contacts import contract
from predictor.contacts.schema import CONTACT_SCHEMA, REQUIRED_COLUMNS, validate
from predictor.contacts.simulate import SimulatorConfig, simulate
from predictor.contacts.store import contacts_table
from predictor.serving.api import ContactIn

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_description_of_a_contact_has_the_contract_fields() -> None:
    fields = list(contract.names())
    assert list(ContactIn.model_fields) == fields
    assert list(CONTACT_SCHEMA.columns) == fields
    assert [c.name for c in contacts_table.columns][: len(fields)] == fields
    assert list(simulate(SimulatorConfig(n_contacts=50, seed=1)).contacts.columns) == fields
    assert tuple(f.name for f in contract.CONTACT_FIELDS if f.required) == REQUIRED_COLUMNS


def test_the_readme_table_is_the_contract() -> None:
    assert contract.markdown_table() in README.read_text()


def test_the_contract_example_is_a_valid_contact_in_a_file_and_in_a_request() -> None:
    import pandas as pd

    row = contract.example()
    assert validate(pd.DataFrame([row])).n_rejected_rows == 0
    assert ContactIn.model_validate(row).contact_id == row["contact_id"]
