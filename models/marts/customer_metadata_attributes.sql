-- Up to 10 extra (name, value) attributes per customer_metadata row (the API's limit): the matched APSIS
-- profile's other attributes by name, then its tags as 'tag:<name>' = 'true'.
with

customer_metadata as (

    select * from {{ ref('customer_metadata') }}

),

attributes as (

    select * from {{ ref('stg_apsis__attributes') }}

),

tags as (

    select * from {{ ref('stg_apsis__tags') }}

),

profile_values as (

    select
        profile_key,
        coalesce(attribute_name, attribute_id) as attribute_name,
        value as attribute_value,
        0 as kind_order
    from attributes
    where attribute_id not in (
            '{{ var("apsis_customer_id_attribute") }}', '{{ var("apsis_email_attribute") }}',
            '{{ var("apsis_phone_attribute") }}', '{{ var("apsis_zipcode_attribute") }}',
            '{{ var("apsis_state_attribute") }}', '{{ var("apsis_country_attribute") }}'
        )

    union all

    select
        profile_key,
        'tag:' || coalesce(tag_name, tag_id) as attribute_name,
        'true' as attribute_value,
        1 as kind_order
    from tags

),

ranked as (

    select
        customer_metadata.external_conversation_id,
        customer_metadata.external_customer_id,
        profile_values.attribute_name,
        profile_values.attribute_value,
        row_number() over (
            partition by customer_metadata.external_conversation_id, customer_metadata.external_customer_id
            order by profile_values.kind_order, profile_values.attribute_name
        ) as attribute_rank
    from customer_metadata
    inner join profile_values
        on customer_metadata.apsis_profile_key = profile_values.profile_key

)

select * from ranked
where attribute_rank <= 10
