-- One row per APSIS profile with the attributes the metadata push uses, and one profile per customer id
-- (the latest exported one when several profiles carry the same customer id).
with

attributes as (

    select * from {{ ref('stg_apsis__attributes') }}

),

tags as (

    select * from {{ ref('stg_apsis__tags') }}

),

profiles as (

    select * from {{ ref('stg_apsis__profiles') }}

),

pivoted as (

    select
        profile_key,
        max(case when attribute_id = '{{ var("apsis_customer_id_attribute") }}' then value end) as customer_id,
        max(case when attribute_id = '{{ var("apsis_email_attribute") }}' then value end) as email_address,
        max(case when attribute_id = '{{ var("apsis_phone_attribute") }}' then value end) as phone_number,
        max(case when attribute_id = '{{ var("apsis_zipcode_attribute") }}' then value end) as address_zipcode,
        max(case when attribute_id = '{{ var("apsis_state_attribute") }}' then value end) as address_state,
        max(case when attribute_id = '{{ var("apsis_country_attribute") }}' then value end) as address_country
    from attributes
    group by profile_key

),

vip as (

    select distinct profile_key
    from tags
    where tag_id = '{{ var("apsis_vip_tag") }}'

),

joined as (

    select
        pivoted.*,
        vip.profile_key is not null as is_vip,
        profiles.last_exported_at
    from pivoted
    inner join profiles
        on pivoted.profile_key = profiles.profile_key
    left join vip
        on pivoted.profile_key = vip.profile_key
    where pivoted.customer_id is not null

),

latest_per_customer as (

    {{ asapp_latest(
        'joined',
        partition_by=['customer_id'],
        order_by=['last_exported_at desc', 'profile_key desc'],
        columns=['profile_key', 'customer_id', 'email_address', 'phone_number', 'address_zipcode',
                 'address_state', 'address_country', 'is_vip', 'last_exported_at'],
    ) }}

)

select * from latest_per_customer
