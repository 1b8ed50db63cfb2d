"""Money: accounts, transfers and reversals, amounts, and the checks on the ledger."""
