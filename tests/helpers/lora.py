"""What the unit and end-to-end tests of lora share."""

RANK = 4
