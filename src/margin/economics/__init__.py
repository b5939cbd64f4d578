"""Money, energy and carbon: the formulas of DESIGN §4. Money is Decimal here, nano-USD in storage."""
