"""The front of the request path: every request gets one typed ``RequestContext`` here, read
(and added to) by every stage after it: the guard, the plan, the exchange."""
