with

profiles as (

    {{ relation_or_empty(source('apsis', 'profiles'), {
        'profile_key': dbt.type_string(),
        'export_id': dbt.type_string(),
    }) }}

),

exports as (

    {{ relation_or_empty(source('apsis', 'exports'), {
        'export_id': dbt.type_string(),
        'requested_at': dbt.type_timestamp(),
    }) }}

),

exported as (

    select
        profiles.profile_key,
        profiles.export_id,
        exports.requested_at
    from profiles
    inner join exports
        on profiles.export_id = exports.export_id

),

summarised as (

    select
        profile_key,
        min(requested_at) as first_exported_at,
        max(requested_at) as last_exported_at,
        count(distinct export_id) as export_count
    from exported
    group by profile_key

),

latest as (

    {{ asapp_latest(
        'exported',
        partition_by=['profile_key'],
        order_by=['requested_at desc', 'export_id desc'],
        columns=['profile_key', 'export_id', 'requested_at'],
    ) }}

),

final as (

    select
        summarised.profile_key,
        latest.export_id as latest_export_id,
        summarised.first_exported_at,
        summarised.last_exported_at,
        summarised.export_count
    from summarised
    inner join latest
        on summarised.profile_key = latest.profile_key

)

select * from final
