-- Customers who abandoned a cart up to the end of the run's data interval.
-- Templated by Airflow: a backfill for an older date computes the group as of that date.
SELECT customer_id, email, mobile, first_name, last_name, city, state, zip, country, ads_consent
FROM customers
WHERE cart_abandoned_at IS NOT NULL
  AND cart_abandoned_at < '{{ data_interval_end.strftime("%Y-%m-%dT%H:%M:%S") }}'
