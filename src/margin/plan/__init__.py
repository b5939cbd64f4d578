"""`margin plan`: capacity, TCO and carbon planner across silicon and regions (catalogs, roofline, memory,
placement), validated against measurements. Offline kit: `margin serve` never imports it."""
