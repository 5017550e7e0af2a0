"""Tables and joins: changelog tables materialised in a task's state, joins of streams
and tables, and table aggregations that retract what a changed row added."""
